"""Batched evaluation on standardised values: MSE/MAE of the model and of two baselines,
repeat-last (naive) and seasonal naive (the same step of the last season), and the quantiles'
coverage, interval width and pinball loss (training/calibration.py)."""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from training import calibration
from training.data.series import Series
from training.models.window_scaling import WindowScaled


class Prediction(NamedTuple):
    """A model's outputs on a set of windows, with their truth and the baselines', in the
    globally standardised units the model reads."""

    forecast: np.ndarray  # [W, H, F_out]
    quantiles: np.ndarray | None  # [W, H, F_out, Q], uncalibrated
    target: np.ndarray  # [W, H, F_out]
    baselines: dict[str, np.ndarray]  # name -> [W, H, F_out]
    unit: np.ndarray  # [W, F_out] each window's target scale: 1, or its own (window scaling)
    own: np.ndarray  # [W, F_out] factor to the window's series' own standardisation
    groups: np.ndarray  # [W] the window's series id


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
    forecasts, quantiles, targets, units = [], [], [], []
    season = series.frequency.season
    window_scaled = isinstance(model, WindowScaled)
    baselines: dict[str, list[np.ndarray]] = {"repeat_last": []}
    if season and 1 < season <= input_len:
        baselines["seasonal_naive"] = []
    target_index = list(series.target_index)
    for i in range(0, len(starts), batch_size):
        past, future, target = series.batch(starts[i : i + batch_size], input_len, horizon)
        x = torch.from_numpy(past).to(device)
        f, q = model(x, torch.from_numpy(future).to(device))
        forecasts.append(f.cpu().numpy())
        units.append(
            model.target_scale(x)[:, 0].cpu().numpy()
            if window_scaled
            else np.ones((len(past), len(target_index)), np.float32)
        )  # [B, F_out]
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
        np.concatenate(units),
        series.own_scale(starts),
        np.asarray(series.ids)[series.series_of(starts)],
    )


def seasonal_naive(past: np.ndarray, season: int, horizon: int) -> np.ndarray:
    """past [W, L, F] -> [W, H, F]: step h repeats the value one season before it, taken
    from the last season of the window (season <= L)."""
    index = past.shape[1] - season + np.arange(horizon) % season  # [H]
    return past[:, index]


def mse(pred: np.ndarray, target: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Mean squared error; with `groups` [W], the mean over groups of each group's MSE."""
    return _per_group((pred.astype(np.float64) - target) ** 2, groups)


def mae(pred: np.ndarray, target: np.ndarray, groups: np.ndarray | None = None) -> float:
    return _per_group(np.abs(pred.astype(np.float64) - target), groups)


def _per_group(errors: np.ndarray, groups: np.ndarray | None) -> float:
    if groups is None:
        return float(np.mean(errors))
    return float(np.mean([np.mean(errors[groups == g]) for g in np.unique(groups)]))


def coverage(quantiles: np.ndarray, target: np.ndarray) -> list[float]:
    """Share of targets at or below each quantile: ideally the quantile levels themselves."""
    return [float(np.mean(target <= quantiles[..., k])) for k in range(quantiles.shape[-1])]


def summarise(
    prediction: Prediction,
    part: str,
    season: int | None,
    levels: tuple[float, ...] = (),
    correction: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of one part ("val" or "test"): MSE/MAE of the model and the baselines; with
    quantiles, their scores after `correction` (the conformal offsets, when given) and their
    coverage before it (`{part}_quantile_coverage_uncalibrated`).

    Errors are measured in each series' own standardisation and averaged per series, then over
    the series (with one series: the usual standardised MSE/MAE); `{part}_per_series` lists
    each series' when there are several."""
    forecast, quantiles, target, baselines, unit, own, groups = prediction
    if quantiles is not None and correction is not None:
        fixed = calibration.apply(quantiles, correction, unit)
    else:
        fixed = quantiles
    k = own[:, None, :]  # [W, 1, F_out]: into each series' own units
    truth = target  # global units: coverage does not depend on the units
    forecast, target = forecast * k, target * k
    several = len(np.unique(groups)) > 1
    by = groups if several else None
    out: dict[str, Any] = {
        f"{part}_mse": mse(forecast, target, by),
        f"{part}_mae": mae(forecast, target, by),
        f"{part}_windows": len(target),
    }
    for name, baseline in baselines.items():
        out[f"{name}_{part}_mse"] = mse(baseline * k, target, by)
        out[f"{name}_{part}_mae"] = mae(baseline * k, target, by)
    if "seasonal_naive" in baselines:
        out["season"] = season or 0
    if several:
        out[f"{part}_per_series"] = {
            str(g): {
                "mse": mse(forecast[groups == g], target[groups == g]),
                "mae": mae(forecast[groups == g], target[groups == g]),
                "windows": int(np.sum(groups == g)),
            }
            for g in np.unique(groups)
        }
    if quantiles is not None and fixed is not None and levels:
        q = k[..., None]  # [W, 1, F_out, 1]
        out[f"{part}_quantile_coverage"] = coverage(fixed, truth)
        out.update(calibration.scores(fixed * q, target, levels, part))
        if correction is not None:
            out[f"{part}_quantile_coverage_uncalibrated"] = coverage(quantiles, truth)
            out[f"{part}_pinball_uncalibrated"] = calibration.scores(
                quantiles * q, target, levels, part
            )[f"{part}_pinball"]
    return out


def evaluate(
    model: nn.Module, series: Series, part: str, input_len: int, horizon: int, device: str
) -> dict[str, Any]:
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
