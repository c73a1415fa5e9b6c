"""Accuracy benchmark: forecasters on the ETT files, the translator on Multi30k test splits.

    seqserve bench accuracy [--data etth1] [--cells gru,lstm] [--seeds 0,1,2] [--horizons 96]
                            [--quantiles 0.1,0.5,0.9] [--baselines ets,arima]
                            [--translator model_repository/translator --splits test_2016_flickr]

Forecasters: each (data, horizon, cell, seed) is trained with the defaults of
`seqserve train forecaster` (the benchmark settings: features M, input 96, the standard split
and scaling of docs/forecasting.md, "ETTh1 benchmark") and evaluated on the test split; the
table gives the mean and standard deviation over seeds beside the published figures.
`--data` also takes a CSV (with `--features`, `--target`, `--date-col`, `--freq`, `--fill` as in
training; window sizes then come from the data). With `--baselines`, a second table puts the
model beside naive, seasonal naive, ETS and ARIMA (bench/classical.py) on the same evenly spaced
test windows (`--baseline-windows`), with the quantiles' coverage, interval width and pinball
loss; statsmodels comes with the `bench` extra.
Translator: an exported model (`<repository>/<name>`, latest version) is scored through the
serving decoder (`core.translation` over onnxruntime, the code the server runs) with sacreBLEU
and chrF, default settings.
Prints a table and writes JSON (machine, versions, settings, every run) to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.serving import ROOT, machine

# Published test MSE / MAE, multivariate (M), input 96, from each paper's own tables.
PUBLISHED: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("etth1", 96): {
        "SegRNN": (0.368, 0.395),
        "DLinear": (0.386, 0.400),
        "iTransformer": (0.386, 0.405),
        "PatchTST": (0.414, 0.419),
        "repeat last": (1.295, 0.713),
    },
}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def forecasters(
    args: argparse.Namespace, workdir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """-> one row per (data, horizon, cell) over seeds, and the baseline comparisons."""
    from training.config import ForecasterConfig, TrainConfig, parse_quantiles
    from training.train_forecaster import train

    quantiles = parse_quantiles(args.quantiles)
    methods = [m for m in args.baselines.split(",") if m]
    csv_options = {
        "features": args.features,
        "target": tuple(t for t in args.target.split(",") if t),
        "date_col": args.date_col,
        "freq": args.freq,
        "fill": args.fill,
    }
    rows, comparisons = [], []
    for data in args.data.split(","):
        for horizon in (int(h) for h in args.horizons.split(",")):
            found: dict[str, Any] = {}  # the classical forecasts, made once for every seed
            for cell in args.cells.split(","):
                runs = []
                for seed in (int(s) for s in args.seeds.split(",")):
                    model = replace(
                        ForecasterConfig(), cell=cell, horizon=horizon, quantiles=quantiles
                    )
                    tc = replace(
                        TrainConfig(),
                        data=data,
                        seed=seed,
                        threads=args.threads,
                        synthetic_rows=args.synthetic_rows,
                        **({"epochs": args.epochs} if args.epochs else {}),
                        **csv_options,
                    )
                    out = workdir / f"{Path(data).name}-{horizon}-{cell}-{seed}"
                    m = train(model, tc, out, progress=False)
                    if methods:
                        compared = versus_baselines(out, methods, args.baseline_windows, found)
                        comparisons.append({"data": data, "cell": cell, "seed": seed, **compared})
                    runs.append(
                        {
                            k: m[k]
                            for k in (
                                "seed",
                                "test_mse",
                                "test_mae",
                                "val_mse",
                                "repeat_last_test_mse",
                                "repeat_last_test_mae",
                                "test_windows",
                                "horizon",
                                "best_epoch",
                                "epochs",
                                "wall_seconds",
                                "cpu_seconds",
                            )
                        }
                    )
                    print(
                        f"  {data} H={m['horizon']} {cell} seed {seed}: test MSE "
                        f"{m['test_mse']:.4f} MAE {m['test_mae']:.4f} "
                        f"({m['wall_seconds']:.0f} s)",
                        flush=True,
                    )
                mse, mae = (_mean_std([r[k] for r in runs]) for k in ("test_mse", "test_mae"))
                horizon = runs[0]["horizon"]  # 0 asks for the data's choice
                rows.append(
                    {
                        "data": data,
                        "horizon": horizon,
                        "cell": cell,
                        "runs": runs,
                        "test_mse": mse,
                        "test_mae": mae,
                        "published": PUBLISHED.get((data, horizon), {}),
                    }
                )
    return rows, comparisons


def versus_baselines(
    checkpoint_dir: Path, methods: list[str], windows: int, found: dict[str, Any]
) -> dict[str, Any]:
    """The trained model beside naive, seasonal naive and `methods` (bench/classical.py) on
    `windows` evenly spaced test windows, scored as training scores the model (one path:
    `summarise`; per series in its own units, then averaged). Classical models are fitted on
    each series on its own. `found` keeps the classical forecasts for the next seed (they do
    not depend on it)."""
    import numpy as np
    import torch

    from bench import classical
    from export.forecaster import load_forecaster
    from training import checkpoint
    from training.config import TrainConfig
    from training.data.series import prepare
    from training.evaluate import predict, summarise

    payload = checkpoint.load(checkpoint_dir)
    config, graph = load_forecaster(payload)
    tc = checkpoint.rebuild(TrainConfig, payload["train_config"])
    L, H = config.input_len, config.horizon  # noqa: N806
    levels = config.quantiles or (0.1, 0.5, 0.9)
    series = prepare(tc, L, H, standardise=config.scaling != "window")
    season = series.frequency.season
    every = series.starts("test", L, H)
    starts = every[np.unique(np.linspace(0, len(every) - 1, min(windows, len(every))).astype(int))]
    with torch.no_grad():
        prediction = predict(graph.net, series, starts, L, H, "cpu")
    correction = payload.get("calibration")
    correction = None if correction is None else correction.numpy()
    targets = series.past[:, list(series.target_index)]  # [N, F_out]
    owner = series.series_of(starts)  # [W]
    for method in methods:
        if method in found:
            continue
        started = time.perf_counter()
        forecast = np.empty(prediction.target.shape)  # [W, H, F_out]
        quantiles = np.empty((*prediction.target.shape, len(levels)))  # [W, H, F_out, Q]
        fitted: list[str] = []
        for s in np.unique(owner):
            mine, split = owner == s, series.splits[s]
            forecast[mine], quantiles[mine], names = classical.classical_forecasts(
                method, targets, (split.train[0], split.val[1]), starts[mine] + L, L, H,
                levels, season,
            )  # fmt: skip
            fitted += names
        seconds = round(time.perf_counter() - started, 1)
        found[method] = (forecast, quantiles, {"models": fitted, "seconds": seconds})

    def score(forecast: Any, quantiles: Any, fix: Any = None) -> dict[str, float]:
        alone = prediction._replace(forecast=forecast, quantiles=quantiles, baselines={})
        m = summarise(alone, "test", season, levels if quantiles is not None else (), fix)
        keep = ("test_coverage_", "test_interval_width_", "test_pinball")
        out = {"mse": m["test_mse"], "mae": m["test_mae"]}
        return out | {k: v for k, v in m.items() if k.startswith(keep) and "uncal" not in k}

    scores = {"model": score(prediction.forecast, prediction.quantiles, correction)}
    scores |= {name: score(b, None) for name, b in prediction.baselines.items()}
    scores |= {m: score(found[m][0], found[m][1]) for m in methods}
    return {
        "horizon": H,
        "windows": len(starts),
        "of_windows": len(every),
        "series": len(np.unique(owner)),
        "levels": list(levels),
        "scores": scores,
        "fitted": {m: found[m][2] for m in methods},
    }


def translator(args: argparse.Namespace) -> list[dict[str, Any]]:
    from core.translation import native_model
    from serving.models.onnx_step_model import load_translator
    from serving.repository import read_config, select_versions
    from training.data.parallel import multi30k
    from training.translation_eval import evaluate

    model_dir = Path(args.translator)
    if not (model_dir / "config.pbtxt").is_file():
        raise ValueError(f"no model at {model_dir}: expected <repository>/<name>/config.pbtxt")
    config = read_config(model_dir)
    version = select_versions(
        config, sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    )[-1]
    params = {k: v.string_value for k, v in config.parameters.items()}
    model = load_translator(model_dir / str(version))
    rows = []
    for split in args.splits.split(","):
        pairs = multi30k(params["src_lang"], params["tgt_lang"], split)[: args.limit or None]
        # The server rejects sources over max_source_tokens; scoring the rest says so.
        fits = [
            p
            for p in pairs
            if len(model.tokenizer.encode_source(p[0])) <= model.spec.max_source_tokens
        ]
        if len(fits) < len(pairs):
            print(
                f"  {len(pairs) - len(fits)} of {len(pairs)} {split} sources are over "
                f"max_source_tokens {model.spec.max_source_tokens}: scored without them",
                flush=True,
            )
        metrics, _ = evaluate(model, fits, args.beam_size, args.length_penalty, max_rows=256)
        rows.append(
            {
                "model": str(model_dir),
                "version": version,
                **native_model.runtime_of(model.model),  # the graphs or the native translator
                "split": split,
                "skipped_too_long": len(pairs) - len(fits),
                **metrics,
            }
        )
        print(
            f"  {model_dir.name} v{version} {split}: BLEU {metrics['bleu']:.2f} chrF "
            f"{metrics['chrf']:.2f} (beam {args.beam_size})",
            flush=True,
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data | H | cell | seeds | test MSE | test MAE | published (MSE / MAE) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        published = ", ".join(f"{k} {v[0]:.3f} / {v[1]:.3f}" for k, v in r["published"].items())
        lines.append(
            f"| {r['data']} | {r['horizon']} | {r['cell']} | {len(r['runs'])} | "
            f"{r['test_mse'][0]:.4f} ± {r['test_mse'][1]:.4f} | "
            f"{r['test_mae'][0]:.4f} ± {r['test_mae'][1]:.4f} | {published or '—'} |"
        )
    return "\n".join(lines)


def _cell(row: dict[str, float], key: str, digits: int = 3) -> str:
    return f"{row[key]:.{digits}f}" if key in row else "—"


def baseline_table(comparisons: list[dict[str, Any]]) -> str:
    """One row per method of each run: MSE, MAE, coverage per level, the outermost symmetric
    interval's width and the pinball loss (standardised units; — where a method has none)."""
    lines = []
    for c in comparisons:
        levels = c["levels"]
        width_key = f"test_interval_width_{levels[0]:g}_{levels[-1]:g}"
        lines += [
            f"\n{c['data']} H={c['horizon']} {c['cell']} seed {c['seed']}: "
            f"{c['windows']} of {c['of_windows']} test windows",
            f"| method | MSE | MAE | {' | '.join(f'cov {t:g}' for t in levels)} | "
            f"width {levels[0]:g}-{levels[-1]:g} | pinball |",
            "|---|---|---|" + "---|" * len(levels) + "---|---|",
        ]
        for name, row in c["scores"].items():
            fitted = c["fitted"].get(name, {}).get("models", [])
            label = f"{name} ({fitted[0]})" if len(set(fitted)) == 1 else name
            cover = " | ".join(_cell(row, f"test_coverage_{t:g}") for t in levels)
            lines.append(
                f"| {label} | {row['mse']:.4f} | {row['mae']:.4f} | {cover} | "
                f"{_cell(row, width_key)} | {_cell(row, 'test_pinball', 4)} |"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {
        "suite": "accuracy",
        "machine": machine(),
        "settings": vars(args) | {"handler": None},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        if args.cells:
            print("forecasters (test split, standard protocol):")
            with tempfile.TemporaryDirectory() as tmp:
                result["forecasters"], comparisons = forecasters(args, Path(tmp))
            print(table(result["forecasters"]))
            if comparisons:
                result["baselines"] = comparisons
                print(baseline_table(comparisons))
        if args.translator:
            print("translator (serving decoder, sacreBLEU / chrF default settings):")
            result["translator"] = translator(args)
    except (OSError, ValueError, RuntimeError) as err:  # DatasetError, CorpusError among them
        print(f"seqserve bench accuracy: {err}", file=sys.stderr)
        return 2
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"accuracy-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="etth1",
        help="comma-separated: etth1, etth2, ettm1, ettm2, synthetic or a CSV",
    )
    parser.add_argument(
        "--cells",
        default="gru,lstm",
        help="forecaster cells, comma-separated ('' skips the forecasters)",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument(
        "--horizons",
        default="96",
        help="comma-separated, e.g. 96,192,336,720 (0: from the data, as training chooses)",
    )
    parser.add_argument(
        "--quantiles",
        default="",
        help="quantile levels the forecasters train, e.g. 0.1,0.5,0.9 (default: none)",
    )
    parser.add_argument(
        "--baselines",
        default="",
        help="classical baselines beside the model, comma-separated: ets, arima "
        "(naive and seasonal naive come with them; needs the bench extra)",
    )
    parser.add_argument(
        "--baseline-windows",
        type=int,
        default=200,
        help="evenly spaced test windows of the baseline comparison (default: %(default)s)",
    )
    parser.add_argument("--features", default="M", help="M, S or MS, as in training")
    parser.add_argument("--target", default="", help="target column(s) of a CSV")
    parser.add_argument("--date-col", default="date", help="timestamp column of a CSV")
    parser.add_argument("--freq", default="", help="the CSV's frequency (default: inferred)")
    parser.add_argument("--fill", default="none", help="empty CSV cells: none or ffill")
    parser.add_argument(
        "--epochs", type=int, default=0, help="at most this many epochs (0: the training default)"
    )
    parser.add_argument(
        "--synthetic-rows",
        type=int,
        default=8760,
        help="hourly rows of --data synthetic (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--translator", default=None, help="an exported translator, <repository>/<name>, to score"
    )
    parser.add_argument(
        "--splits",
        default="test_2016_flickr,test_2017_flickr",
        help="Multi30k test splits for --translator",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="score only the first N sentences of each split (0: all)",
    )
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--length-penalty", type=float, default=0.6)
    parser.add_argument(
        "--results-dir", default=str(ROOT / "bench" / "results"), help="where the JSON goes"
    )
