"""A tiny training run: beats repeat-last, writes a checkpoint that rebuilds the same model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training import checkpoint
from training.config import ForecasterConfig, TrainConfig
from training.data.series import prepare
from training.models.forecasters import build_forecaster
from training.train_forecaster import loss_fn, selection_score

Run = tuple[Path, dict[str, Any]]


def test_beats_repeat_last_on_a_learnable_series(tiny_run: Run) -> None:
    _, metrics = tiny_run
    assert metrics["test_mse"] < 0.8 * metrics["repeat_last_test_mse"]
    assert metrics["test_mae"] < metrics["repeat_last_test_mae"]
    assert metrics["val_mse"] < metrics["repeat_last_val_mse"]


def test_writes_metrics_plot_and_checkpoint(tiny_run: Run) -> None:
    out, metrics = tiny_run
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in (
        "test_mse",
        "test_mae",
        "val_mse",
        "repeat_last_test_mse",
        "repeat_last_test_mae",
        "test_windows",
        "wall_seconds",
        "epochs",
    ):
        assert key in on_disk
    assert on_disk["test_windows"] == 2000 - int(2000 * 0.7) - int(2000 * 0.1) - 24 + 1
    assert (out / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(metrics["test_quantile_coverage"]) == 3


def test_quantiles_are_calibrated_on_validation_and_scored_on_test(tiny_run: Run) -> None:
    """Conformal offsets fitted on validation: test coverage lands near each level, and the
    record holds coverage, interval width and pinball loss on both parts, before and after."""
    out, metrics = tiny_run
    low, mid, high = metrics["test_quantile_coverage"]
    assert low < mid < high
    for tau in (0.1, 0.5, 0.9):
        assert metrics[f"test_coverage_{tau:g}"] == pytest.approx(tau, abs=0.1)
        assert 0 <= metrics[f"val_coverage_{tau:g}"] <= 1
    for part in ("val", "test"):
        assert metrics[f"{part}_interval_width_0.1_0.9"] > 0
        assert metrics[f"{part}_pinball"] > 0
        assert len(metrics[f"{part}_quantile_coverage_uncalibrated"]) == 3
    correction = checkpoint.load(out)["calibration"]
    assert tuple(correction.shape) == (24, 1, 3)  # [H, F_out, Q]


def test_checkpoint_round_trip(tiny_run: Run) -> None:
    out, metrics = tiny_run
    payload = checkpoint.load(out)
    assert payload["kind"] == "forecaster" and payload["metrics"] == metrics
    config = checkpoint.rebuild(ForecasterConfig, payload["model_args"])
    train_config = checkpoint.rebuild(TrainConfig, payload["train_config"])
    assert config.quantiles == (0.1, 0.5, 0.9) and config.target_index == (0,)
    assert config.n_past == 3 and config.n_future == 2
    model = build_forecaster(config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    series = prepare(train_config, config.input_len, config.horizon)
    assert payload["data"]["past_features"] == list(series.past_features)
    np.testing.assert_allclose(payload["data"]["mean"], series.mean)
    past, future, target = series.batch(series.starts("test", 48, 24), 48, 24)
    with torch.no_grad():
        forecast, _ = model(torch.from_numpy(past), torch.from_numpy(future))
    mse = float(np.mean((forecast.numpy().astype(np.float64) - target) ** 2))
    assert mse == pytest.approx(metrics["test_mse"], rel=1e-5)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint\.pt"):
        checkpoint.load(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize(("loss", "expected"), [("mse", 2.5), ("mae", 1.5), ("mse+mae", 2.0)])
def test_point_loss_options(loss: str, expected: float) -> None:
    config = ForecasterConfig(n_past=1)
    forecast = torch.tensor([[[1.0], [-2.0]]])  # [B=1, H=2, F=1]
    target = torch.zeros(1, 2, 1)
    levels = torch.tensor([])
    value = loss_fn(config, TrainConfig(loss=loss), levels, forecast, None, target)
    assert float(value) == pytest.approx(expected)


def test_selection_follows_the_loss() -> None:
    val = {"val_mse": 0.6, "val_mae": 0.5}
    assert selection_score("mse", val) == 0.6
    assert selection_score("mae", val) == 0.5
    assert selection_score("mse+mae", val) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig(loss="huber")


def test_small_data_gets_smaller_batches_and_is_compared_with_both_baselines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """245 training windows in batches of 128 would be one optimizer step an epoch: the batch
    shrinks to keep 16. Seasonal naive (a day of hours) is scored beside repeat-last, and the
    verdict on validation is recorded."""
    from training.train_forecaster import train

    model = ForecasterConfig(input_len=24, horizon=12, d_model=8)
    config = TrainConfig(data="synthetic", synthetic_rows=400, epochs=1, threads=1)
    metrics = train(model, config, tmp_path / "run", progress=False)
    assert metrics["batch_size"] == 245 // 16 and metrics["seg_len"] == 12
    assert metrics["season"] == 24 and metrics["frequency"] == "h"
    assert {"seasonal_naive_val_mse", "seasonal_naive_test_mse"} <= set(metrics)
    assert isinstance(metrics["beats_baselines_on_val"], bool)
    if not metrics["beats_baselines_on_val"]:
        assert "does not beat" in capsys.readouterr().err
