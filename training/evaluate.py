"""Batched evaluation on standardised values: MSE/MAE of the model and of two baselines,
repeat-last (naive) and seasonal naive (the same step of the last season), and the quantiles'
coverage, interval width and pinball loss (training/calibration.py)."""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from training import calibration
from training.data.series import Series


class Prediction(NamedTuple):
    """A model's outputs on a set of windows, with their truth and the baselines'."""

    forecast: np.ndarray  # [W, H, F_out]
    quantiles: np.ndarray | None  # [W, H, F_out, Q], uncalibrated
    target: np.ndarray  # [W, H, F_out]
    baselines: dict[str, np.ndarray]  # name -> [W, H, F_out]


@torch.no_grad()
def predict(
    model: nn.Module,
    series: Series,
    starts: np.ndarray,
    input_len: int,
    horizon: int,
    device: str,
    batch_size: int = 512,
) -> Prediction:
    """Every window (none dropped); the baselines are repeat-last, and seasonal naive when the
    frequency has a season that fits in the window."""
    model.eval()
    forecasts, quantiles, targets = [], [], []
    season = series.frequency.season
    baselines: dict[str, list[np.ndarray]] = {"repeat_last": []}
    if season and 1 < season <= input_len:
        baselines["seasonal_naive"] = []
    target_index = list(series.target_index)
    for i in range(0, len(starts), batch_size):
        past, future, target = series.batch(starts[i : i + batch_size], input_len, horizon)
        f, q = model(torch.from_numpy(past).to(device), torch.from_numpy(future).to(device))
        forecasts.append(f.cpu().numpy())
        if q is not None:
            quantiles.append(q.cpu().numpy())
        targets.append(target)
        history = past[..., target_index]  # [B, L, F_out]
        baselines["repeat_last"].append(
            np.repeat(history[:, -1:], horizon, axis=1)
        )  # [B, H, F_out]
        if "seasonal_naive" in baselines:
            baselines["seasonal_naive"].append(seasonal_naive(history, season, horizon))
    return Prediction(
        np.concatenate(forecasts),
        np.concatenate(quantiles) if quantiles else None,
        np.concatenate(targets),
        {name: np.concatenate(parts) for name, parts in baselines.items()},
    )


def seasonal_naive(past: np.ndarray, season: int, horizon: int) -> np.ndarray:
    """past [W, L, F] -> [W, H, F]: step h repeats the value one season before it, taken
    from the last season of the window (season <= L)."""
    index = past.shape[1] - season + np.arange(horizon) % season  # [H]
    return past[:, index]


def mse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((pred.astype(np.float64) - target) ** 2))


def mae(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.abs(pred.astype(np.float64) - target)))


def coverage(quantiles: np.ndarray, target: np.ndarray) -> list[float]:
    """Share of targets at or below each quantile: ideally the quantile levels themselves."""
    return [float(np.mean(target <= quantiles[..., k])) for k in range(quantiles.shape[-1])]


def summarise(
    prediction: Prediction,
    part: str,
    season: int | None,
    levels: tuple[float, ...] = (),
    correction: np.ndarray | None = None,
) -> dict[str, float | int | list[float]]:
    """Metrics of one part ("val" or "test"): MSE/MAE of the model and the baselines; with
    quantiles, their scores after `correction` (the conformal offsets, when given) and their
    coverage before it (`{part}_quantile_coverage_uncalibrated`)."""
    forecast, quantiles, target, baselines = prediction
    out: dict[str, float | int | list[float]] = {
        f"{part}_mse": mse(forecast, target),
        f"{part}_mae": mae(forecast, target),
        f"{part}_windows": len(target),
    }
    for name, baseline in baselines.items():
        out[f"{name}_{part}_mse"] = mse(baseline, target)
        out[f"{name}_{part}_mae"] = mae(baseline, target)
    if "seasonal_naive" in baselines:
        out["season"] = season or 0
    if quantiles is not None and levels:
        fixed = quantiles if correction is None else calibration.apply(quantiles, correction)
        out[f"{part}_quantile_coverage"] = coverage(fixed, target)
        out.update(calibration.scores(fixed, target, levels, part))
        if correction is not None:
            out[f"{part}_quantile_coverage_uncalibrated"] = coverage(quantiles, target)
            out[f"{part}_pinball_uncalibrated"] = calibration.scores(
                quantiles, target, levels, part
            )[f"{part}_pinball"]
    return out


def evaluate(
    model: nn.Module, series: Series, part: str, input_len: int, horizon: int, device: str
) -> dict[str, float | int | list[float]]:
    """The point forecast's metrics on one part, as early stopping reads them."""
    starts = series.starts(part, input_len, horizon)
    prediction = predict(model, series, starts, input_len, horizon, device)
    return summarise(prediction, part, series.frequency.season)


def baseline_verdict(metrics: dict) -> dict[str, object]:
    """Whether the model beats both baselines on validation MSE (test is not looked at), with
    a warning when it does not: then the baseline is the better forecaster of this data."""
    baselines = {"repeat-last": metrics["repeat_last_val_mse"]}
    if "seasonal_naive_val_mse" in metrics:
        baselines["seasonal naive"] = metrics["seasonal_naive_val_mse"]
    name, best = min(baselines.items(), key=lambda item: item[1])
    beats = metrics["val_mse"] < best
    if not beats:
        print(
            f"warning: the model does not beat {name} on validation (MSE {metrics['val_mse']:.4f} "
            f"against {best:.4f}): a simpler forecaster does better on this data",
            file=sys.stderr,
        )
    return {"beats_baselines_on_val": beats, "best_baseline_on_val": name}
