"""The translator's training recipe: learning-rate schedules, the dropout split, the loss,
the length penalty chosen on validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F  # noqa: N812 - the usual alias

from core.translation import Tokenizer
from seqserve.cli import build_parser, main
from training.data.tokenizer import train_tokenizer
from training.models.transformer import TranslatorConfig, make_model
from training.train_translator import (
    check_bf16,
    configs_from_args,
    encode_pairs,
    load_translator_checkpoint,
    lr_factor,
    resampled,
)
from training.translator_config import TRANSLATOR_PRESETS, TranslatorTrainConfig

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


def test_warm_up_is_linear_and_inverse_sqrt_follows() -> None:
    assert lr_factor(1, 100) == pytest.approx(0.01)
    assert lr_factor(50, 100) == pytest.approx(0.5)
    assert lr_factor(100, 100) == pytest.approx(1.0)
    assert lr_factor(400, 100) == pytest.approx(0.5)  # sqrt(100 / 400)


def test_linear_schedule_starts_at_the_peak_and_ends_at_zero() -> None:
    # warm-up ended at 10 % of the run: the decay runs from 1 there to 0 at the end
    assert lr_factor(100, 100, "linear", progress=0.1, warm_progress=0.1) == pytest.approx(1.0)
    assert lr_factor(500, 100, "linear", progress=0.55, warm_progress=0.1) == pytest.approx(0.5)
    assert lr_factor(900, 100, "linear", progress=1.0, warm_progress=0.1) == 0.0
    assert lr_factor(950, 100, "linear", progress=1.2, warm_progress=0.1) == 0.0  # never negative
    assert lr_factor(50, 100, "linear", progress=0.05) == pytest.approx(0.5)  # still warming up


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="schedule"):
        TranslatorTrainConfig(schedule="cosine")


def test_attention_and_activation_dropout_default_to_dropout() -> None:
    assert (CONFIG.attention_p, CONFIG.activation_p) == (0.3, 0.3)
    model = make_model(CONFIG)
    assert model.encoder.layers[0].self_attn.dropout.p == 0.3
    assert model.encoder.layers[0].feed_forward.dropout.p == 0.3
    split = make_model(dataclasses.replace(CONFIG, attention_dropout=0.0, activation_dropout=0.1))
    assert split.encoder.layers[0].self_attn.dropout.p == 0.0
    assert split.decoder.layers[0].src_attn.dropout.p == 0.0
    assert split.decoder.layers[0].feed_forward.dropout.p == 0.1
    assert split.encoder.layers[0].sublayer[0].dropout.p == 0.3  # residual dropout unchanged


def test_logits_are_what_the_log_probabilities_normalise() -> None:
    torch.manual_seed(0)
    model = make_model(dataclasses.replace(CONFIG, dropout=0.0)).eval()
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])  # [B=2, S=4]
    tgt = torch.tensor([[2, 10, 11], [2, 12, 13]])  # [B, T=3]
    logits = model.logits(src, tgt)  # [B, T, V]
    assert torch.allclose(F.log_softmax(logits, dim=-1), model(src, tgt), atol=1e-6)


def test_multi30k_preset_stops_by_steps() -> None:
    """The preset stops by steps, so its model is the same on any machine; its time budget is
    a safety stop past what the steps take on 2 cores (about 0.9 s a step), and the warm-up ends
    long before either (at about 1.5 s a step on a slower 2-core machine)."""
    train = TRANSLATOR_PRESETS["multi30k"].train
    assert train.schedule == "linear"
    assert train.max_steps * 0.9 < train.max_minutes * 60
    assert train.warmup < 0.25 * min(train.max_steps, train.max_minutes * 60 / 1.5)


def test_length_penalty_is_chosen_on_validation(
    tiny_checkpoint: Path, tiny_metrics: dict[str, Any]
) -> None:
    """The tiny preset tries alphas 0 and 1 on the validation split; the best BLEU wins (the
    first on ties), scores the test split and becomes the served default."""
    search = tiny_metrics["length_penalty_search"]
    assert search["split"] == "val" and set(search["bleu"]) == {"0.0", "1.0"}
    best = max((0.0, 1.0), key=lambda a: (search["bleu"][str(a)], -a))
    assert search["chosen"] == best == tiny_metrics["length_penalty"]
    _, tc, _, _ = load_translator_checkpoint(tiny_checkpoint)
    assert tc.length_penalty == best and tc.length_penalty_grid == (0.0, 1.0)


def test_greedy_validation_bleu_chooses_the_kept_weights(
    tiny_checkpoint: Path, tiny_metrics: dict[str, Any]
) -> None:
    """The tiny preset averages its last 2 snapshots; greedy BLEU on validation decides whether
    the average or the lowest-loss snapshot is kept (the average on ties), and is recorded."""
    selection = tiny_metrics["checkpoint_selection"]
    assert selection["by"] == "bleu"
    scores = selection["greedy_val_bleu"]
    assert set(scores) == {"averaged", "best"}
    assert tiny_metrics["checkpoint_averaged"] == (scores["averaged"] >= scores["best"])


@pytest.mark.parametrize("scores", [(1.0, 2.0), (2.0, 1.0), (1.0, 1.0)])
def test_fit_keeps_the_candidate_that_scores_higher(scores: tuple[float, float]) -> None:
    """`fit`'s score sees the average, then the best snapshot; the higher one is what the model
    holds on return (the average on ties)."""
    import numpy as np

    from training.train_translator import Encoded, fit

    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(4, 40, size=int(rng.integers(2, 8)))) for _ in range(300)]
    data = Encoded([[*s, 3] for s in seqs], [s[::-1] for s in seqs])
    tc = TranslatorTrainConfig(
        max_tokens=400, max_steps=12, lr=3e-3, warmup=4, eval_every=3, patience=10, average_last=3
    )
    seen: list[dict[str, torch.Tensor]] = []

    def score(model: torch.nn.Module) -> float:
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return scores[len(seen) - 1]

    torch.manual_seed(0)
    model = make_model(CONFIG)
    result = fit(model, tc, data, data, torch.device("cpu"), quiet=True, score=score)
    assert len(seen) == 2 and result.selection == {"averaged": scores[0], "best": scores[1]}
    assert any(not torch.equal(seen[0][k], seen[1][k]) for k in seen[0])  # two candidates
    kept = 0 if scores[0] >= scores[1] else 1
    assert result.averaged == (kept == 0)
    assert all(torch.equal(v, seen[kept][k]) for k, v in model.state_dict().items())


def test_select_by_flag_reaches_the_train_config() -> None:
    args = ["train", "translator", "--data", "multi30k", "--out", "x"]
    assert configs_from_args(build_parser().parse_args(args))[1].select_by == "bleu"
    _, tc = configs_from_args(build_parser().parse_args([*args, "--select-by", "loss"]))
    assert tc.select_by == "loss"
    with pytest.raises(ValueError, match="select_by"):
        TranslatorTrainConfig(select_by="chrf")


def test_a_length_penalty_given_by_hand_is_not_searched() -> None:
    args = build_parser().parse_args(
        ["train", "translator", "--data", "multi30k", "--length-penalty", "0.9", "--out", "x"]
    )
    _, tc = configs_from_args(args)
    assert tc.length_penalty == 0.9 and tc.length_penalty_grid == ()
    _, tc = configs_from_args(
        build_parser().parse_args(["train", "translator", "--data", "multi30k", "--out", "x"])
    )
    assert tc.length_penalty_grid == (0.6, 0.8, 1.0, 1.2)
    _, tc = configs_from_args(
        build_parser().parse_args(
            ["train", "translator", "--data", "multi30k", "--length-penalty-grid", "", "--out", "x"]
        )
    )
    assert tc.length_penalty_grid == ()


def test_bf16_is_refused_on_a_cpu_without_bf16_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Emulated bf16 is many times slower than fp32: the run stops before any work, naming
    the flag; a CPU with bf16 units passes the check."""
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        check_bf16(torch.device("cpu"))
        return
    out = tmp_path / "run"
    assert main(["train", "translator", "--preset", "tiny", "--bf16", "--out", str(out)]) == 2
    assert "--bf16: this CPU has no bf16 matrix units" in capsys.readouterr().err
    assert not out.exists()


def test_subword_regularization_resamples_segmentations_of_the_same_text() -> None:
    """Each epoch's ids spell the same sentences in other pieces; a sample over the limits
    keeps the deterministic ids."""
    words = ["ein", "hund", "läuft", "über", "die", "wiese", "zwei", "kinder", "spielen"]
    pairs = [(" ".join(words[i:] + words[:i]), " ".join(words[: i + 1])) for i in range(9)] * 4
    tokenizer = Tokenizer.from_bytes(train_tokenizer([s for p in pairs for s in p], 60))
    data, dropped = encode_pairs(tokenizer, pairs, 64, 64)
    assert dropped == 0 and data.pairs == pairs
    epochs = [resampled(tokenizer, data, 0.1, 64, 64) for _ in range(3)]
    for epoch in epochs:
        assert [tokenizer.decode(s) for s in epoch.src] == [s for s, _ in pairs]
        assert [tokenizer.decode(t) for t in epoch.tgt] == [t for _, t in pairs]
        assert all(s[-1] == tokenizer.eos_id for s in epoch.src)
    assert epochs[0].src != epochs[1].src != epochs[2].src
    assert any(e.src != data.src for e in epochs)
    tight = resampled(tokenizer, data, 0.1, max(len(s) for s in data.src), 64)
    assert all(len(s) <= max(len(s) for s in data.src) for s in tight.src)


def test_subword_alpha_flag_reaches_the_train_config() -> None:
    args = build_parser().parse_args(
        ["train", "translator", "--data", "multi30k", "--subword-alpha", "0.2", "--out", "x"]
    )
    assert configs_from_args(args)[1].subword_alpha == 0.2
    assert TranslatorTrainConfig().subword_alpha == 0.0  # off unless asked for
