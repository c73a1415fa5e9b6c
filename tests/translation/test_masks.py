"""Masks: True = may attend; masked scores get a finite -1e9 and exactly zero weight."""

from __future__ import annotations

import torch

from training.models.masks import pad_mask, subsequent_mask, target_mask
from training.models.transformer import NEG_INF, attention


def test_pad_mask_marks_real_tokens() -> None:
    ids = torch.tensor([[5, 6, 3, 0], [7, 3, 0, 0]])
    mask = pad_mask(ids, pad_id=0)
    assert mask.shape == (2, 1, 4) and mask.dtype == torch.bool
    assert mask[:, 0].tolist() == [[True, True, True, False], [True, True, False, False]]


def test_subsequent_mask_is_lower_triangular() -> None:
    mask = subsequent_mask(3)
    assert mask.shape == (1, 3, 3)
    assert mask[0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_target_mask_combines_causal_and_padding() -> None:
    tgt = torch.tensor([[2, 5, 0]])
    mask = target_mask(tgt, pad_id=0)
    assert mask.shape == (1, 3, 3)
    assert mask[0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]


def test_attention_gives_masked_keys_zero_weight_without_inf() -> None:
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    mask = torch.tensor([True, True, False, True, False]).view(1, 1, 1, 5)
    out, p = attention(q, k, v, mask)
    assert out.shape == (1, 2, 3, 4) and p.shape == (1, 2, 3, 5)
    assert torch.all(p[..., [2, 4]] == 0) and torch.isfinite(out).all()
    assert torch.allclose(p.sum(-1), torch.ones(1, 2, 3))
    assert NEG_INF == -1e9
