"""Accuracy benchmark: forecasters on the ETT files, the translator on Multi30k test splits.

    seqserve bench accuracy [--data etth1] [--cells gru,lstm] [--seeds 0,1,2] [--horizons 96]
                            [--translator model_repository/translator --splits test_2016_flickr]

Forecasters: each (data, horizon, cell, seed) is trained with the defaults of
`seqserve train forecaster` (the benchmark settings: features M, input 96, the standard split
and scaling of docs/forecasting.md, "ETTh1 benchmark") and evaluated on the test split; the
table gives the mean and standard deviation over seeds beside the published figures.
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


def forecasters(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    from training.config import ForecasterConfig, TrainConfig
    from training.train_forecaster import train

    rows = []
    for data in args.data.split(","):
        for horizon in (int(h) for h in args.horizons.split(",")):
            for cell in args.cells.split(","):
                runs = []
                for seed in (int(s) for s in args.seeds.split(",")):
                    model = replace(ForecasterConfig(), cell=cell, horizon=horizon)
                    tc = replace(
                        TrainConfig(),
                        data=data,
                        seed=seed,
                        threads=args.threads,
                        synthetic_rows=args.synthetic_rows,
                        **({"epochs": args.epochs} if args.epochs else {}),
                    )
                    m = train(
                        model, tc, workdir / f"{data}-{horizon}-{cell}-{seed}", progress=False
                    )
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
                                "best_epoch",
                                "epochs",
                                "wall_seconds",
                                "cpu_seconds",
                            )
                        }
                    )
                    print(
                        f"  {data} H={horizon} {cell} seed {seed}: test MSE "
                        f"{m['test_mse']:.4f} MAE {m['test_mae']:.4f} "
                        f"({m['wall_seconds']:.0f} s)",
                        flush=True,
                    )
                mse, mae = (_mean_std([r[k] for r in runs]) for k in ("test_mse", "test_mae"))
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
    return rows


def translator(args: argparse.Namespace) -> list[dict[str, Any]]:
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
                result["forecasters"] = forecasters(args, Path(tmp))
            print(table(result["forecasters"]))
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
    parser.add_argument("--horizons", default="96", help="comma-separated, e.g. 96,192,336,720")
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
