"""Shapes, and the cached step: one row at a time, rows at different lengths, empty cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from training.models.masks import pad_mask
from training.models.transformer import TranslatorConfig, count_parameters, make_model

CONFIG = TranslatorConfig(
    vocab_size=40,
    d_model=32,
    num_heads=4,
    d_ff=64,
    num_encoder_layers=2,
    num_decoder_layers=3,
    dropout=0.0,
    max_len=32,
)
L, H, K = 3, 4, 8


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_model(CONFIG).eval()


SRC = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])  # [B=2, S=5], row 1 padded
TGT = torch.tensor([[2, 11, 12, 13, 14], [2, 15, 16, 17, 18]])  # [B, T=5]


def test_config_is_frozen_and_rebuilds() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIG.d_model = 64  # type: ignore[misc]
    assert TranslatorConfig(**dataclasses.asdict(CONFIG)) == CONFIG
    with pytest.raises(ValueError, match="divisible"):
        TranslatorConfig(vocab_size=10, d_model=30, num_heads=4)


def test_shapes(model: torch.nn.Module) -> None:
    mask = pad_mask(SRC, 0)
    memory = model.encode(SRC, mask)
    assert memory.shape == (2, 5, 32)
    k, v = model.cross_kv(memory)
    assert k.shape == v.shape == (L, 2, H, 5, K)
    assert model(SRC, TGT).shape == (2, 5, 40)


def test_tied_embeddings_share_one_matrix(model: torch.nn.Module) -> None:
    w = model.src_embed.lut.weight
    assert model.tgt_embed.lut.weight is w and model.generator.proj.weight is w
    untied = make_model(dataclasses.replace(CONFIG, tie_embeddings=False))
    assert count_parameters(untied) == count_parameters(model) + 2 * 40 * 32


def test_cached_steps_equal_teacher_forcing(model: torch.nn.Module) -> None:
    """Step-by-step decoding from an empty cache gives the full forward's log-probs."""
    full = model(SRC, TGT)  # [B, T, V]
    mask = pad_mask(SRC, 0)
    cross_k, cross_v = model.cross_kv(model.encode(SRC, mask))
    past_k = past_v = torch.zeros(L, 2, H, 0, K)
    past_mask = torch.zeros(2, 0, dtype=torch.bool)
    for t in range(TGT.size(1)):
        lp, past_k, past_v = model.decode_step(
            TGT[:, t : t + 1],
            torch.full((2, 1), t),
            past_k,
            past_v,
            past_mask,
            cross_k,
            cross_v,
            mask[:, 0],
        )
        assert lp.shape == (2, 40) and past_k.shape == (L, 2, H, t + 1, K)
        torch.testing.assert_close(lp, full[:, t], atol=1e-5, rtol=0)
        past_mask = torch.ones(2, t + 1, dtype=torch.bool)


def test_rows_at_different_lengths_share_a_step(model: torch.nn.Module) -> None:
    """Row 1 joined two steps later: its cache is left-padded and masked, its position is its
    own; its log-probs equal those of decoding it alone."""
    mask = pad_mask(SRC, 0)
    cross_k, cross_v = model.cross_kv(model.encode(SRC, mask))

    def run(rows: list[int], steps: int) -> tuple[torch.Tensor, ...]:
        pk = pv = torch.zeros(L, len(rows), H, 0, K)
        pm = torch.zeros(len(rows), 0, dtype=torch.bool)
        for t in range(steps):
            lp, pk, pv = model.decode_step(
                TGT[rows, t : t + 1],
                torch.full((len(rows), 1), t),
                pk,
                pv,
                pm,
                cross_k[:, rows],
                cross_v[:, rows],
                mask[rows, 0],
            )
            pm = torch.ones(len(rows), t + 1, dtype=torch.bool)
        return lp, pk, pv

    _, k0, v0 = run([0], 3)  # row 0 alone, 3 tokens cached
    _, k1, v1 = run([1], 1)  # row 1 alone, 1 token cached
    pad = torch.zeros(L, 1, H, 2, K)
    past_k = torch.cat([k0, torch.cat([pad, k1], dim=3)], dim=1)  # [L, 2, H, 3, K]
    past_v = torch.cat([v0, torch.cat([pad, v1], dim=3)], dim=1)
    past_mask = torch.tensor([[True, True, True], [False, False, True]])
    tokens = torch.stack([TGT[0, 3:4], TGT[1, 1:2]])  # [2, 1]
    positions = torch.tensor([[3], [1]])
    lp, k, _ = model.decode_step(
        tokens, positions, past_k, past_v, past_mask, cross_k, cross_v, mask[:, 0]
    )
    alone0, _, _ = run([0], 4)
    alone1, _, _ = run([1], 2)
    torch.testing.assert_close(lp[0], alone0[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(lp[1], alone1[0], atol=1e-5, rtol=0)
    assert k.shape == (L, 2, H, 4, K)
