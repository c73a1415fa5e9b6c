"""Attention masks. One convention everywhere: True means "may attend"; attention fills the
False positions with a finite -1e9 (ONNX- and fp16-friendly), never -inf."""

from __future__ import annotations

import torch


def pad_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Keys that are real tokens. [B, S] int64 -> [B, 1, S] bool (broadcasts over queries)."""
    return (ids != pad_id).unsqueeze(-2)  # [B, S] -> [B, 1, S]


def subsequent_mask(size: int, device: torch.device | None = None) -> torch.Tensor:
    """Causal mask: query t may attend keys 0..t. -> [1, T, T] bool."""
    return torch.ones(1, size, size, dtype=torch.bool, device=device).tril()  # [1, T, T]


def target_mask(tgt: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Causal AND not padding, for teacher forcing. The first position is the start token,
    never padding, even when its id is pad's (Marian starts from pad). [B, T] int64 ->
    [B, T, T] bool."""
    causal = subsequent_mask(tgt.size(1), tgt.device)  # [1, T, T]
    keys = pad_mask(tgt, pad_id)  # [B, 1, T]
    keys[..., 0] = True
    return keys & causal  # [B, 1, T] & [1, T, T] -> [B, T, T]
