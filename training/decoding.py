"""Decoding with the PyTorch model.

- `TorchStepModel` puts the model behind serving's `StepModel` protocol, so evaluation runs the
  very beam search and continuous batching code that serving runs on the ONNX graphs.
- `greedy_decode` is the plain reference (Annotated-Transformer style, batched): it re-runs the
  decoder over the whole prefix at every step, no cache. Export checks the ONNX graphs and the
  cached step loop against it.
"""

from __future__ import annotations

import numpy as np
import torch

from training.models.masks import pad_mask, subsequent_mask
from training.models.transformer import EncoderDecoder


class TorchStepModel:
    """core.translation.graphs.StepModel on an EncoderDecoder (eval mode, no grad)."""

    def __init__(self, model: EncoderDecoder, device: torch.device | str = "cpu") -> None:
        self.model = model.eval()
        self.device = torch.device(device)
        c = model.config
        self.num_layers, self.num_heads, self.head_dim = (
            c.num_decoder_layers,
            c.num_heads,
            c.head_dim,
        )

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @torch.no_grad()
    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = self._t(src_mask).unsqueeze(1)  # [B, S] -> [B, 1, S]
        memory = self.model.encode(self._t(src_ids), mask)  # [B, S, D]
        k, v = self.model.cross_kv(memory)  # [L, B, H, S, K] each
        return k.float().cpu().numpy(), v.float().cpu().numpy()

    @torch.no_grad()
    def step(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        past_k: np.ndarray,
        past_v: np.ndarray,
        past_mask: np.ndarray,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        src_mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self._t
        log_probs, k, v = self.model.decode_step(
            t(tokens),
            t(positions),
            t(past_k),
            t(past_v),
            t(past_mask),
            t(cross_k),
            t(cross_v),
            t(src_mask),
        )  # [R, V], [L, R, H, P+1, K] x2
        return (log_probs.float().cpu().numpy(), k.float().cpu().numpy(), v.float().cpu().numpy())


@torch.no_grad()
def greedy_decode(model: EncoderDecoder, src: torch.Tensor, max_len: int) -> list[list[int]]:
    """Greedy tokens per row (EOS excluded), recomputing the full prefix every step.
    src [B, S] int64 (EOS-terminated, right-padded)."""
    model.eval()
    c = model.config
    src_mask = pad_mask(src, c.pad_id)  # [B, 1, S]
    memory = model.encode(src, src_mask)  # [B, S, D]
    ys = torch.full((src.size(0), 1), c.bos_id, dtype=torch.long, device=src.device)  # [B, 1]
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)  # [B]
    for _ in range(max_len):
        tgt_mask = subsequent_mask(ys.size(1), src.device)  # [1, T, T]
        hidden = model.decode(memory, src_mask, ys, tgt_mask.expand(ys.size(0), -1, -1))
        next_word = model.generator(hidden[:, -1]).argmax(dim=-1)  # [B]
        next_word = torch.where(done, torch.full_like(next_word, c.pad_id), next_word)
        ys = torch.cat([ys, next_word.unsqueeze(1)], dim=1)  # [B, T] -> [B, T+1]
        done |= next_word == c.eos_id
        if bool(done.all()):
            break
    out = []
    for row in ys[:, 1:].tolist():
        out.append(
            row[: row.index(c.eos_id)] if c.eos_id in row else [t for t in row if t != c.pad_id]
        )
    return out
