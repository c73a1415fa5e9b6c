"""Time decoder.onnx files side by side: one decoder step per call, the files taking turns call
by call (so the VM's slow spells hit all of them alike), medians of per-call times.

    python -m bench.decoder_step old=OLD/translator/1/decoder.onnx \
        new=NEW/translator/1/decoder.onnx [--rows 1,8,32] [--past 16] [--source 18] \
        [--calls 3000] [--out FILE.json]

Each file gets the same random inputs: a stacked cache (an export by seqserve before per-layer
caches: past_k [L, R, H, P, K]) or per-layer caches (past_k_0 ...), told apart by the input
names. One onnxruntime thread per session, as served. Prints a table and the ratio of the first
file's median to each other's (above 1 = faster than the first), and checks that every file's
log-probabilities agree with the first's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.translation.graphs import decoder_feeds


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _stacked_inputs(
    sess: ort.InferenceSession, rows: int, past: int, source: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Decoder-step inputs with stacked caches; the first row's cache half padding, the last
    row's source half padding."""
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    if "past_k" in shapes:
        layers, _, heads, _, head_dim = shapes["past_k"]
    else:
        layers = sum(name.startswith("past_k_") for name in shapes)
        _, heads, _, head_dim = shapes["past_k_0"]
    past_mask = np.ones((rows, past), bool)  # [R, P]
    past_mask[0, : past // 2] = False
    src_mask = np.ones((rows, source), bool)  # [R, S]
    src_mask[-1, source // 2 :] = False
    kv, cross = (layers, rows, heads, past, head_dim), (layers, rows, heads, source, head_dim)
    return {
        "tokens": rng.integers(4, 100, (rows, 1)),
        "positions": np.full((rows, 1), past),
        "past_k": rng.standard_normal(kv, np.float32),
        "past_v": rng.standard_normal(kv, np.float32),
        "past_mask": past_mask,
        "cross_k": rng.standard_normal(cross, np.float32),
        "cross_v": rng.standard_normal(cross, np.float32),
        "src_mask": src_mask,
    }


def _feeds(sess: ort.InferenceSession, stacked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if "past_k" in {i.name for i in sess.get_inputs()}:
        return stacked
    return decoder_feeds(**stacked)


def restricted(log_probs: np.ndarray, vocab_ids: np.ndarray | None) -> np.ndarray:
    """log_probs [R, V] renormalised over vocab_ids [C] -> [R, C] (unchanged if None): what a
    step with a vocabulary shortlist gives for the same logits."""
    if vocab_ids is None:
        return log_probs
    kept = log_probs[:, vocab_ids]  # [R, C]
    top = kept.max(axis=1, keepdims=True)
    return kept - top - np.log(np.exp(kept - top).sum(axis=1, keepdims=True))


def measure(
    files: dict[str, str],
    rows: int,
    past: int,
    source: int,
    calls: int,
    shortlists: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Time the files side by side; `shortlists` gives the vocab_ids input of the files that
    take one (bench.shortlist), whose log-probabilities are compared with the first file's
    renormalised over the same tokens."""
    shortlists = shortlists or {}
    sessions = {name: _session(path) for name, path in files.items()}
    stacked = _stacked_inputs(
        next(iter(sessions.values())), rows, past, source, np.random.default_rng(0)
    )
    feeds = {name: _feeds(s, stacked) for name, s in sessions.items()}
    for name, ids in shortlists.items():
        feeds[name] = feeds[name] | {"vocab_ids": ids}
    first = next(iter(sessions))
    reference = sessions[first].run(["log_probs"], feeds[first])[0]
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(max(20, calls // 50)):  # warm-up
        for name, s in sessions.items():
            s.run(None, feeds[name])
    for _ in range(calls):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    out = {}
    for name, s in sessions.items():
        log_probs = s.run(["log_probs"], feeds[name])[0]
        deciles = statistics.quantiles(times[name], n=10)
        out[name] = {
            "median_ms": statistics.median(times[name]) * 1e3,
            "p10_ms": deciles[0] * 1e3,
            "p90_ms": deciles[-1] * 1e3,
            "speedup_vs_first": statistics.median(times[first]) / statistics.median(times[name]),
            "max_abs_diff_vs_first": float(
                np.abs(log_probs - restricted(reference, shortlists.get(name))).max()
            ),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="NAME=PATH of a decoder.onnx (2 or more)")
    parser.add_argument("--rows", default="1,8,32")
    parser.add_argument("--past", type=int, default=16)
    parser.add_argument("--source", type=int, default=18)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    files = dict(f.split("=", 1) for f in args.files)
    result: dict = {
        "settings": vars(args) | {"out": str(args.out)},
        "load_avg_start": list(os.getloadavg()),
        "rows": {},
    }
    print("| rows | file | median ms | p10-p90 ms | speed-up vs first | max abs diff |")
    print("|---|---|---|---|---|---|")
    for rows in (int(r) for r in args.rows.split(",")):
        calls = max(200, args.calls * 8 // max(rows, 8))
        result["rows"][rows] = measure(files, rows, args.past, args.source, calls)
        for name, m in result["rows"][rows].items():
            print(
                f"| {rows} | {name} | {m['median_ms']:.3f} | {m['p10_ms']:.3f}-"
                f"{m['p90_ms']:.3f} | {m['speedup_vs_first']:.3f} | "
                f"{m['max_abs_diff_vs_first']:.1e} |"
            )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
