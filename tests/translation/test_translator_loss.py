"""The translator's training loss: label-smoothed cross-entropy per target token, and R-Drop's
symmetric KL between two dropout samples of the same batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812 - the usual alias

from seqserve.cli import build_parser
from training.models.transformer import TranslatorConfig, make_model
from training.train_translator import Encoded, configs_from_args, fit
from training.translator_config import TranslatorTrainConfig
from training.translator_loss import token_loss

CONFIG = TranslatorConfig(
    vocab_size=40,
    d_model=32,
    num_heads=4,
    d_ff=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dropout=0.3,
    max_len=32,
)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three pairs of different lengths, padded with 0."""
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(4, 40, (3, 7), generator=gen)  # [B, S]
    tgt = torch.randint(4, 40, (3, 6), generator=gen)  # [B, T+1]
    src[0, 5:] = 0
    tgt[1, 4:] = 0
    return src, tgt[:, :-1], tgt[:, 1:]


def test_without_r_drop_the_loss_is_label_smoothed_cross_entropy_per_token() -> None:
    torch.manual_seed(0)
    model = make_model(CONFIG).eval()
    src, tgt_in, tgt_out = batch()
    logits = model.logits(src, tgt_in)  # [B, T, V]
    expected = F.cross_entropy(
        logits.flatten(0, 1), tgt_out.flatten(), ignore_index=0, label_smoothing=0.1
    )
    assert torch.allclose(token_loss(model, src, tgt_in, tgt_out, 0.1), expected, atol=1e-6)


def test_r_drop_adds_nothing_when_the_two_samples_agree() -> None:
    """In eval mode there is no dropout: both copies give the same distribution, KL 0."""
    torch.manual_seed(0)
    model = make_model(CONFIG).eval()
    src, tgt_in, tgt_out = batch()
    plain = token_loss(model, src, tgt_in, tgt_out, 0.1)
    assert torch.allclose(
        token_loss(model, src, tgt_in, tgt_out, 0.1, rdrop_alpha=5.0), plain, atol=1e-6
    )


def test_r_drop_adds_alpha_times_the_symmetric_kl_of_the_two_dropout_samples() -> None:
    torch.manual_seed(0)
    model = make_model(CONFIG).train()
    src, tgt_in, tgt_out = batch()
    losses = {}
    for alpha in (1.0, 3.0):
        torch.manual_seed(7)  # the same dropout masks for both
        losses[alpha] = token_loss(model, src, tgt_in, tgt_out, 0.1, rdrop_alpha=alpha)
    torch.manual_seed(7)
    with torch.no_grad():
        logits = model.logits(torch.cat([src, src]), torch.cat([tgt_in, tgt_in]))  # [2B, T, V]
    lp1, lp2 = F.log_softmax(logits, dim=-1).chunk(2)  # [B, T, V] each
    keep = tgt_out != 0  # [B, T]
    kl = (
        F.kl_div(lp2[keep], lp1[keep], log_target=True, reduction="sum")
        + F.kl_div(lp1[keep], lp2[keep], log_target=True, reduction="sum")
    ) / 2
    ntok = 2 * int(keep.sum())
    assert float(kl) > 1e-3  # dropout 0.3: the two samples differ
    assert torch.allclose((losses[3.0] - losses[1.0]).detach(), 2.0 * kl / ntok, rtol=1e-4)
    ce = F.cross_entropy(
        logits.flatten(0, 1), tgt_out.repeat(2, 1).flatten(), ignore_index=0, label_smoothing=0.1
    )
    assert torch.allclose(losses[1.0].detach(), ce + kl / ntok, rtol=1e-5)


def test_fit_trains_with_r_drop() -> None:
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(4, 40, size=int(rng.integers(2, 8)))) for _ in range(300)]
    data = Encoded([[*s, 3] for s in seqs], [s[::-1] for s in seqs])
    tc = TranslatorTrainConfig(
        max_tokens=400,
        max_steps=24,
        lr=3e-3,
        warmup=4,
        eval_every=8,
        patience=10,
        average_last=2,
        rdrop_alpha=5.0,
    )
    torch.manual_seed(0)
    result = fit(make_model(CONFIG), tc, data, data, torch.device("cpu"), quiet=True)
    losses = [h["val_loss"] for h in result.history if "val_loss" in h]
    assert result.steps == 24 and losses[-1] < losses[0]


def test_rdrop_alpha_flag_reaches_the_train_config() -> None:
    args = ["train", "translator", "--data", "multi30k", "--out", "x"]
    assert configs_from_args(build_parser().parse_args(args))[1].rdrop_alpha == 0.0
    _, tc = configs_from_args(build_parser().parse_args([*args, "--rdrop-alpha", "5"]))
    assert tc.rdrop_alpha == pytest.approx(5.0)
