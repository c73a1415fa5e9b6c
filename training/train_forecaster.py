"""`seqserve train forecaster`: train, select on validation, test once, write the checkpoint.

DIR/checkpoint.pt   model_args, train_config, state_dict, data (columns, scaler, frequency,
                    a validation sample in raw units for export checks), calibration (the
                    quantiles' conformal offsets), metrics
DIR/metrics.json    test/val MSE and MAE (standardised values), the baselines', the quantiles'
                    coverage, interval width and pinball loss after conformal calibration,
                    windows, epochs, wall time
DIR/forecast.png    a few test windows: history, truth, forecast, quantile band
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.flags import from_flags
from training import calibration, checkpoint, distributed
from training.config import ForecasterConfig, TrainConfig
from training.data import window_size
from training.data.frame import CSVError
from training.data.scalers import inv_std_scale
from training.data.series import Series, load, prepare
from training.data.sources import DatasetError
from training.evaluate import baseline_verdict, evaluate, predict, summarise
from training.models.forecasters import architecture_name, build_forecaster
from training.models.quantiles import pinball_loss
from training.plots import plot_forecasts

MIN_STEPS = 16  # optimizer steps an epoch at least: the batch size shrinks for small data
VALIDATION_SAMPLE = 256  # validation windows kept (raw units) for export-time accuracy checks


def log(message: str) -> None:
    print(message, flush=True)


def data_record(series: Series, config: ForecasterConfig) -> dict[str, Any]:
    """What export and serving need to know about the data, plus a raw validation sample."""
    L, H = config.input_len, config.horizon  # noqa: N806
    starts = series.starts("val", L, H)
    pick = starts[np.linspace(0, len(starts) - 1, min(VALIDATION_SAMPLE, len(starts))).astype(int)]
    past, future, target = series.batch(pick, L, H)
    t = list(series.target_index)
    return {
        "source": series.source,
        "past_features": list(series.past_features),
        "target_names": list(series.target_names),
        "future_features": list(series.future_features),
        "frequency": series.frequency.alias,
        "holidays": list(series.frequency.holidays),
        # the step in seconds when it is fixed, as repositories before `frequency` carried it
        "frequency_seconds": (series.frequency.fixed_ns or 0) // 10**9,
        "mean": series.mean.tolist(),
        "std": series.std.tolist(),
        # row ranges of each part, per series (stacked row numbers) when there are several
        "split": [
            {part: list(split.part(part)) for part in ("train", "val", "test")}
            for split in series.splits
        ]
        if len(series.splits) > 1
        else {part: list(series.split.part(part)) for part in ("train", "val", "test")},
        "series": list(series.ids) if len(series.ids) > 1 else [],
        "validation_sample": {  # raw units, as the exported graph takes them
            "past": torch.from_numpy(
                inv_std_scale(past, series.mean, series.std).astype(np.float32)
            ),  # [n, L, F_in]
            "future": torch.from_numpy(future),  # [n, H, F_fut]
            "target": torch.from_numpy(
                inv_std_scale(target, series.mean[t], series.std[t]).astype(np.float32)
            ),  # [n, H, F_out]
        },
    }


def loss_fn(
    model_config: ForecasterConfig,
    train_config: TrainConfig,
    levels: torch.Tensor,
    forecast: torch.Tensor,
    quantiles: torch.Tensor | None,
    target: torch.Tensor,
) -> torch.Tensor:
    error = forecast - target  # [B, H, F_out]
    if train_config.loss == "mse":
        loss = error.square().mean()
    elif train_config.loss == "mae":
        loss = error.abs().mean()
    else:  # mse+mae
        loss = (error.square().mean() + error.abs().mean()) / 2
    if quantiles is not None:
        loss = loss + train_config.quantile_weight * pinball_loss(quantiles, target, levels)
    return loss


def selection_score(loss: str, val: dict[str, float]) -> float:
    """What early stopping and the kept epoch compare: the validation value of the loss."""
    if loss == "mse":
        return val["val_mse"]
    if loss == "mae":
        return val["val_mae"]
    return (val["val_mse"] + val["val_mae"]) / 2


def train(
    model_config: ForecasterConfig,
    train_config: TrainConfig,
    out: Path,
    progress: bool = True,
    world: distributed.World = distributed.SINGLE,
) -> dict[str, Any]:
    """Train and write DIR; returns the metrics. The data-dependent fields of `model_config`
    (n_past, target_index, n_future) are filled in from the data. Under torchrun (`world`,
    training/distributed.py) each rank trains on its share of every batch, rank 0 alone
    validates, decides and writes, and the other ranks return {}."""
    started, cpu_started = time.perf_counter(), time.process_time()
    tc = train_config
    device = world.device(tc.device)

    def note(message: str) -> None:
        if world.main:
            log(message)

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to torch")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    frames, frequency = load(tc)
    # many series: the window sizes of the median series; shorter ones may be left out
    rows = int(np.median([len(f) for f in frames.values()]))
    given = model_config
    model_config = window_size.resolve(model_config, tc.data, rows, frequency)
    if not model_config.scaling:
        model_config = replace(model_config, scaling="window" if len(frames) > 1 else "global")
    L, H = model_config.input_len, model_config.horizon  # noqa: N806
    chosen = [f"{k} {getattr(model_config, k)}" for k in ("input_len", "horizon", "seg_len",
              "scaling") if not getattr(given, k)]  # fmt: skip
    if chosen:
        many = f"{len(frames)} series, median " if len(frames) > 1 else ""
        note(f"from the data ({many}{rows} rows, frequency {frequency.alias}): {', '.join(chosen)}")

    series = prepare(tc, L, H, (frames, frequency), model_config.scaling == "global", note)
    model_config = replace(
        model_config,
        n_past=len(series.past_features),
        target_index=series.target_index,
        n_future=len(series.future_features),
    )
    model = build_forecaster(model_config).to(device)
    net = distributed.wrap(world, model)  # what trains: `model` itself on one process
    if world.parallel:
        torch.manual_seed(tc.seed + world.rank)  # each rank its own dropout masks
    n_params = sum(p.numel() for p in model.parameters())
    note(
        f"{architecture_name(model_config)}: {n_params:,} parameters; data {tc.data} "
        f"({tc.features}: {len(series.past_features)} in, {len(series.target_names)} out, "
        f"future {list(series.future_features)}); device {device}"
    )
    levels = torch.tensor(model_config.quantiles, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    train_starts = series.starts("train", L, H)
    # An epoch of at least MIN_STEPS optimizer steps: 127 windows in batches of 128 were one
    # step an epoch, and early stopping ended the run after 8 steps.
    batch_size = min(tc.batch_size, max(1, len(train_starts) // MIN_STEPS))
    if batch_size < tc.batch_size:
        note(f"batch size {batch_size}, not {tc.batch_size}: {len(train_starts)} training "
            f"windows would make fewer than {MIN_STEPS} steps an epoch")  # fmt: skip
    n_batches = max(1, len(train_starts) // batch_size)  # drop the last partial batch
    best_score, best_state, best_epoch, stale, epochs_run = math.inf, None, 0, 0, 0
    ones = np.ones(batch_size)  # each window weighs the same in the loss's mean

    for epoch in range(1, tc.epochs + 1):
        epoch_started = time.perf_counter()
        net.train()
        order = rng.permutation(train_starts)  # the same on every rank: same seed
        bar = tqdm(
            range(n_batches),
            desc=f"epoch {epoch}/{tc.epochs}",
            disable=not (progress and world.main),
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        total = 0.0
        for b in bar:
            part, weight = distributed.share(
                world, order[b * batch_size : (b + 1) * batch_size], ones
            )
            past, future, target = (
                torch.from_numpy(a).to(device) for a in series.batch(part, L, H)
            )
            forecast, quantiles = net(past, future)  # [B, H, F_out], [B, H, F_out, Q]
            if model_config.scaling == "window":  # errors in each window's own units
                scale = model.target_scale(past)  # [B, 1, F_out]
                forecast, target = forecast / scale, target / scale
                quantiles = None if quantiles is None else quantiles / scale.unsqueeze(-1)
            loss = loss_fn(model_config, tc, levels, forecast, quantiles, target)
            optimizer.zero_grad(set_to_none=True)
            (loss * weight).backward()  # DDP averages the ranks' gradients
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
            optimizer.step()
            total += loss.item() * weight  # summed over ranks / N: the batch's mean loss
            bar.set_postfix(loss=f"{total / (b + 1):.4f}")
        bar.close()
        total = distributed.total(world, total) / world.size
        epochs_run = epoch
        lr = optimizer.param_groups[0]["lr"]
        stop = False
        if world.main:  # rank 0 validates and decides; the others wait for its word
            val = evaluate(model, series, "val", L, H, device)
            score = selection_score(tc.loss, val)
            better = score < best_score
            note(
                f"epoch {epoch}: train loss {total / n_batches:.4f}  val mse "
                f"{val['val_mse']:.4f}  mae {val['val_mae']:.4f}  lr {lr:.2e}  "
                f"{time.perf_counter() - epoch_started:.0f}s{'  *' if better else ''}"
            )
            if better:
                best_score, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                stop = stale >= tc.patience
                if stop:
                    note(f"early stop: no better validation {tc.loss} for {tc.patience} epochs")
        if distributed.decide(world, stop):
            break
        if epoch >= tc.warm_epochs:
            for group in optimizer.param_groups:
                group["lr"] = lr * tc.lr_decay

    distributed.leave(world)  # rank 0 goes on alone
    if not world.main:
        return {}
    assert best_state is not None
    model.load_state_dict(best_state)
    metrics, correction = final_metrics(model, series, model_config, device)
    metrics.update(
        {
            "best_epoch": best_epoch,
            "epochs": epochs_run,
            "parameters": n_params,
            "architecture": architecture_name(model_config),
            "data": tc.data,
            "features": tc.features,
            "input_len": L,
            "horizon": H,
            "seg_len": model_config.seg_len,
            "frequency": frequency.alias,
            "batch_size": batch_size,
            "seed": tc.seed,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1),
            "torch_threads": torch.get_num_threads(),
            "processes": world.size,  # torchrun's; batch_size is the global batch
        }
    )

    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save(
        out,
        {
            "kind": "forecaster",
            "model_args": checkpoint.plain(model_config),
            "train_config": checkpoint.plain(tc),
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "data": data_record(series, model_config),
            # conformal offsets of the quantiles [H, F_out, Q], standardised units (window
            # units for a window-scaled model)
            **({"calibration": torch.from_numpy(correction)} if correction is not None else {}),
            "epoch": best_epoch,
            "metrics": metrics,
        },
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_plot(model, series, model_config, tc, correction, out / "forecast.png")
    return metrics


def final_metrics(
    model: torch.nn.Module, series: Series, config: ForecasterConfig, device: str
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Validation and test metrics of the kept model (test is read here only), and the
    quantiles' conformal correction, fitted on the validation windows (training/calibration.py).
    Validation coverage is measured on windows the correction did not see; a level off by
    more than calibration.TOLERANCE there gets a warning."""
    L, H, levels = config.input_len, config.horizon, config.quantiles  # noqa: N806
    season = series.frequency.season
    val = predict(model, series, series.starts("val", L, H), L, H, device)
    test = predict(model, series, series.starts("test", L, H), L, H, device)
    correction = None
    if val.quantiles is not None:
        correction = calibration.offsets(val.quantiles, val.target, levels, val.unit)
    metrics: dict[str, Any] = {
        **summarise(val, "val", season, levels, correction),
        **summarise(test, "test", season, levels, correction),
    }
    metrics.update(baseline_verdict(metrics))
    if val.quantiles is not None:
        held_out = calibration.held_out_coverage(
            val.quantiles, val.target, levels, H, val.unit, val.groups
        )
        metrics["calibration"] = "split conformal on the validation windows, per level and step"
        if any(math.isnan(c) for c in held_out):
            for tau in levels:  # the in-sample figures say nothing: none rather than those
                metrics.pop(f"val_coverage_{tau:g}", None)
            metrics.pop("val_quantile_coverage", None)
            print(
                f"warning: {metrics['val_windows']} validation windows are too few to check the "
                "quantiles' calibration on windows it did not see",
                file=sys.stderr,
            )
        else:
            metrics["val_quantile_coverage"] = held_out
            metrics.update(
                {f"val_coverage_{tau:g}": c for tau, c in zip(levels, held_out, strict=True)}
            )
        if off := calibration.off_levels(held_out, levels):  # NaN is never off
            print(
                f"warning: the quantiles are not calibrated on held-out validation windows "
                f"({'; '.join(off)}): treat their bands with care",
                file=sys.stderr,
            )
    return metrics, correction


def write_plot(
    model: torch.nn.Module,
    series: Series,
    config: ForecasterConfig,
    tc: TrainConfig,
    correction: np.ndarray | None,
    path: Path,
) -> None:
    """A few evenly spaced test windows of the last target, in raw units."""
    L, H = config.input_len, config.horizon  # noqa: N806
    starts = series.starts("test", L, H)
    pick = starts[np.linspace(0, len(starts) - 1, max(tc.plot_windows, 1)).astype(int)]
    forecast, quantiles, target, _, unit, _, _ = predict(model, series, pick, L, H, tc.device)
    if quantiles is not None and correction is not None:
        quantiles = calibration.apply(quantiles, correction, unit)
    t = series.target_index[-1]
    mean, std = series.mean[t], series.std[t]
    history = series.past[pick[:, None] + np.arange(L), t] * std + mean  # [W, L]
    band = quantiles[:, :, -1, :] * std + mean if quantiles is not None else None  # [W, H, Q]
    title = f"{architecture_name(config)} on {tc.data}: test windows"
    plot_forecasts(
        path,
        history,
        target[:, :, -1] * std + mean,
        forecast[:, :, -1] * std + mean,
        band,
        config.quantiles,
        title,
        series.target_names[-1],
    )


def configs_from_args(args: argparse.Namespace) -> tuple[ForecasterConfig, TrainConfig]:
    """The configs from `seqserve train forecaster`'s flags (generated from their fields);
    the model's channels are filled in from the data."""
    model = from_flags(ForecasterConfig, args, n_past=1, target_index=(0,), n_future=0)
    return model, from_flags(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    try:
        model_config, train_config = configs_from_args(args)
        with distributed.joined(train_config.device) as world:
            metrics = train(model_config, train_config, Path(args.out), not args.quiet, world)
        if not world.main:
            return 0
    except (CSVError, DatasetError, ValueError) as err:
        print(f"seqserve train forecaster: {err}", file=sys.stderr)
        return 2
    log(
        f"test mse {metrics['test_mse']:.4f} mae {metrics['test_mae']:.4f} "
        f"(repeat-last {metrics['repeat_last_test_mse']:.4f} / "
        f"{metrics['repeat_last_test_mae']:.4f}) on {metrics['test_windows']} windows; "
        f"{metrics['wall_seconds']:.0f}s; wrote {args.out}"
    )
    return 0
