"""Train several translator variants at once and collect what each scored, in one JSONL file.

    python -m bench.train_sweep --out DIR [--jobs N] [--common "FLAGS"] \
        NAME="FLAGS" NAME="FLAGS" ...

Each NAME runs `seqserve train translator COMMON FLAGS --out DIR/NAME` as its own process, at
most N at a time. When a run ends, one line goes to DIR/summary.jsonl at once (so a sweep cut
short keeps what finished): its flags, exit status, wall seconds, steps, training target
tokens/s, validation loss, the validation BLEU per length-penalty alpha, and the test BLEU and
chrF. DIR/NAME.log holds each run's output.

For recipes compared at a step budget (`--max-steps`, so the machine's speed and load do not
change the result) on a GPU before a full run on the CPU's time budget. On one H200, two runs
of the Multi30k preset at once each kept the speed of a run alone (about 77k target tokens/s),
four at once ran at 59k to 69k each (twelve 2200-step runs in 7 min 40 s), and fourteen at
once had not finished one run after 440 s, so keep --jobs small. On the 2-core CPU use
--jobs 1. docs/notes/translation-experiments.md records what was compared this way.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

KEPT = (
    "bleu",
    "chrf",
    "steps",
    "epochs",
    "stopped_by",
    "train_seconds",
    "wall_seconds",
    "train_target_tokens_per_second",
    "best_val_loss",
    "final_val_loss",
    "checkpoint_averaged",
    "parameters",
    "device",
    "length_penalty",
)


def _variant(text: str) -> tuple[str, list[str]]:
    name, sep, flags = text.partition("=")
    if not sep or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=\"FLAGS\" (NAME: letters, digits, '-' and '_')"
        )
    return name, shlex.split(flags)


def summarize(
    name: str, flags: list[str], rc: int, seconds: float, folder: Path
) -> dict[str, object]:
    """One line of summary.jsonl; a run that wrote no metrics.json keeps its exit status."""
    line: dict[str, object] = {
        "name": name,
        "flags": shlex.join(flags),
        "rc": rc,
        "seconds": round(seconds, 1),
    }
    metrics_file = folder / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        line.update({k: metrics[k] for k in KEPT if k in metrics})
        search = metrics.get("length_penalty_search") or {}
        line["val_bleu_by_alpha"] = search.get("bleu")
        line["length_penalty"] = search.get("chosen", metrics.get("length_penalty"))
    return line


def run_one(
    name: str, flags: list[str], common: list[str], out: Path, lock: threading.Lock
) -> dict[str, object]:
    command = [
        sys.executable,
        "-m",
        "seqserve",
        "train",
        "translator",
        *common,
        *flags,
        "--out",
        str(out / name),
    ]
    start = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    line = summarize(name, flags, rc, time.monotonic() - start, out / name)
    with lock, open(out / "summary.jsonl", "a") as summary:
        summary.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", type=_variant, metavar='NAME="FLAGS"')
    ap.add_argument("--out", type=Path, required=True, help="folder of runs and summary.jsonl")
    ap.add_argument("--common", default="", help="flags every run gets, before its own")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
    args = ap.parse_args(argv)
    names = [name for name, _ in args.variants]
    if len(set(names)) != len(names):
        ap.error("variant names must differ")
    args.out.mkdir(parents=True, exist_ok=True)
    common = shlex.split(args.common)
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        lines = list(pool.map(lambda v: run_one(v[0], v[1], common, args.out, lock), args.variants))
    return 0 if all(line["rc"] == 0 for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
