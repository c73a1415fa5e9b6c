"""Data-parallel training speed: one process against several, on the same global batches.

    seqserve bench training [--layouts 1x2,2x1] [--steps 20] [--repeats 3] [--preset multi30k]
                            [--data CORPUS]

A layout PxT trains the translator preset for `--steps` optimizer steps under
`torchrun --standalone --nproc-per-node P`, T torch threads a process: `1x2` is one process on
two threads, `2x1` two processes on one thread each, the same two cores. Every layout trains
the same batches (the batch flags are global, training/distributed.py), so their speeds
compare like for like. The layouts run in turn, once per repeat, so that the machine's load
drifts over all of them alike. A run's speed is its training target tokens per second, its
validation left out; each layout's ratio to the first is taken per repeat, and the medians are
reported. The corpus, the tokenizer and the test evaluation are not timed (the runs stop after
training). Writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layouts(text: str) -> list[tuple[int, int]]:
    """'1x2,2x1' -> [(1, 2), (2, 1)]: processes x threads each."""
    out = []
    for item in text.split(","):
        processes, _, threads = item.strip().partition("x")
        if not (processes.isdigit() and threads.isdigit()) or min(int(processes), int(threads)) < 1:
            raise argparse.ArgumentTypeError(f"--layouts: {item!r} is not PROCESSESxTHREADS")
        out.append((int(processes), int(threads)))
    return out


def one_run(preset: str, data: str, steps: int, processes: int, threads: int) -> dict:
    """Train under torchrun with this layout; what rank 0 measured."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
            *("--nproc-per-node", str(processes), "-m", "bench.training"),
            *("--preset", preset, "--steps", str(steps), "--threads", str(threads)),
            *(("--data", data) if data else ()),
            *("--result", str(result)),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
        measured = json.loads(result.read_text())
    trained = measured["seconds"] - measured["validation_seconds"]
    return {**measured, "tokens_per_second": round(measured["target_tokens"] / trained, 1)}


def run(args: argparse.Namespace) -> int:
    started = time.strftime("%Y%m%d-%H%M%S")
    runs: dict[str, list[dict]] = {f"{p}x{t}": [] for p, t in args.layouts}
    for repeat in range(args.repeats):
        for p, t in args.layouts:
            measured = one_run(args.preset, args.data, args.steps, p, t)
            runs[f"{p}x{t}"].append(measured)
            print(
                f"repeat {repeat + 1}: {p} process(es) x {t} thread(s): "
                f"{measured['tokens_per_second']:,.0f} target tokens/s",
                flush=True,
            )
    first = next(iter(runs))
    summary = {
        name: {
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in rs),
            f"ratio_to_{first}": round(
                statistics.median(
                    r["tokens_per_second"] / f["tokens_per_second"]
                    for r, f in zip(rs, runs[first], strict=True)
                ),
                3,
            ),
        }
        for name, rs in runs.items()
    }
    result = {
        "benchmark": "training",
        "preset": args.preset,
        "data": args.data or "the preset's",
        "steps": args.steps,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "summary": summary,
        "runs": runs,
    }
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"training-{args.preset}-{started}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layouts",
        type=layouts,
        default=layouts("1x2,2x1"),
        help="PROCESSESxTHREADS, comma-separated; ratios are to the first (default 1x2,2x1)",
    )
    parser.add_argument("--preset", default="multi30k", help="translator preset to train")
    parser.add_argument(
        "--data",
        default="",
        help="corpus to train on, as `train translator --data` (default: the preset's)",
    )
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps a run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the layouts")
    parser.add_argument(
        "--results-dir", default=str(ROOT / "bench" / "results"), help="where the JSON goes"
    )


def worker(argv: list[str]) -> int:
    """One run, under torchrun: the preset's training for --steps steps, validated once at
    the end; rank 0 writes what it measured to --result."""
    parser = argparse.ArgumentParser(prog="python -m bench.training")
    parser.add_argument("--preset", required=True)
    parser.add_argument("--data", default="")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)

    from dataclasses import replace

    import torch

    from training import distributed
    from training.models.transformer import make_model
    from training.train_translator import fit, set_seed, tokenized
    from training.translator_config import TRANSLATOR_PRESETS

    preset = TRANSLATOR_PRESETS[args.preset]
    tc = replace(
        preset.train,
        max_steps=args.steps,
        eval_every=args.steps,
        max_minutes=0.0,  # no budget: every layout trains the same steps
        **({"data": args.data} if args.data else {}),
        threads=args.threads,
        device="cpu",
    )
    torch.set_num_threads(args.threads)
    with distributed.joined(tc.device) as world:
        set_seed(tc.seed)
        data = tokenized(preset.model, tc, world)
        set_seed(tc.seed)
        model = make_model(data.config)
        fitted = fit(model, tc, data.train, data.val, torch.device("cpu"), True, world=world)
        if world.main:
            measured = {
                "processes": world.size,
                "threads": torch.get_num_threads(),
                "steps": fitted.steps,
                "seconds": round(fitted.seconds, 2),
                "validation_seconds": round(fitted.validation_seconds, 2),
                "target_tokens": fitted.target_tokens,
            }
            args.result.write_text(json.dumps(measured))
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
