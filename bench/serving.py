"""Serving benchmark: in-process onnxruntime ceiling vs the served model, side by side.

    seqserve bench serving [--repository model_repository] [--model forecaster_gru]

In one run, on one machine:
1. the in-process ceiling: the model's ONNX file on an onnxruntime session with exactly the
   server's session options, at batch 1, 8 and 32 (median of repeats);
2. the served model through `perf_analyzer` (Triton's own load generator, C++, gRPC) with
   batch-1 requests at each concurrency, with dynamic batching as configured and with it
   removed from the config ("batching off": same server, same file, a second model name);
   the average batch size comes from the server's nv_inference_count / nv_inference_exec_count.
Prints a table and writes JSON (machine, versions, settings, medians) to bench/results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERF_VENV = ROOT / ".tools" / "perf_analyzer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    return {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
        "versions": {p: metadata.version(p) for p in ("onnxruntime", "grpcio", "numpy")},
    }


def in_process(model_dir: Path, batches: list[int], repeats: int, seconds: float) -> dict:
    """Median latency (ms) and throughput of the raw onnxruntime session, server options."""
    import numpy as np
    import onnxruntime as ort

    from serving.models.onnx_model import session_options
    from serving.repository import read_config, select_versions
    from serving.settings import Settings
    from serving.tensors import CONFIG_TO_V2, DTYPES

    config = read_config(model_dir)
    version = select_versions(config, sorted(int(p.name) for p in model_dir.iterdir()
                                             if p.name.isdigit()))[-1]
    settings = Settings(model_repository=model_dir.parent)
    session = ort.InferenceSession(str(model_dir / str(version) / "model.onnx"),
                                   session_options(config, settings),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        feeds = {}
        for t in config.input:
            dtype = DTYPES[CONFIG_TO_V2[t.data_type]]
            feeds[t.name] = rng.standard_normal([b, *t.dims]).astype(dtype)
        for _ in range(20):
            session.run(None, feeds)
        medians = []
        for _ in range(repeats):
            times, end = [], time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                session.run(None, feeds)
                times.append(time.perf_counter() - t0)
            medians.append(statistics.median(times))
        ms = statistics.median(medians) * 1e3
        out[b] = {"latency_ms": ms, "inferences_per_s": b / ms * 1e3,
                  "spread_ms": [min(medians) * 1e3, max(medians) * 1e3]}
    return out


def _scrape(url: str, model: str) -> tuple[float, float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        for name in ("nv_inference_count", "nv_inference_exec_count"):
            if line.startswith(name + "{") and f'model="{model}"' in line:
                values[name] = float(line.rsplit(" ", 1)[1])
    return values.get("nv_inference_count", 0.0), values.get("nv_inference_exec_count", 0.0)


def perf_analyzer(target: str, model: str, concurrency: int, window_ms: int, out_csv: Path
                  ) -> dict:
    exe = PERF_VENV / "bin" / "perf_analyzer"
    libs = sorted(PERF_VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs[0]) if libs else "")
    cmd = [str(exe), "-m", model, "-u", target, "-i", "grpc", "-b", "1",
           "--concurrency-range", str(concurrency), "-p", str(window_ms), "-s", "25", "-r", "15",
           "-f", str(out_csv)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if run.returncode != 0 and "stable measurement" in run.stdout:
        # A noisy shared machine: accept a wider spread rather than give up (noted in JSON).
        cmd[cmd.index("-s") + 1] = "60"
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({run.returncode}): {run.stdout[-1500:]}"
                           f"{run.stderr[-1500:]}")
    with out_csv.open() as f:
        row = next(csv.DictReader(f))
    return {
        "inferences_per_s": float(row["Inferences/Second"]),
        "avg_latency_ms": (float(row["Client Send"]) + float(row["Network+Server Send/Recv"])
                           + float(row["Server Queue"]) + float(row["Server Compute Input"])
                           + float(row["Server Compute Infer"])
                           + float(row["Server Compute Output"])
                           + float(row["Client Recv"])) / 1e3,
        "p50_ms": float(row["p50 latency"]) / 1e3, "p90_ms": float(row["p90 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
        "server_queue_ms": float(row["Server Queue"]) / 1e3,
        "server_infer_ms": float(row["Server Compute Infer"]) / 1e3,
    }


def _unbatched_copy(model_dir: Path, dest: Path) -> None:
    """The same model with its `dynamic_batching` removed ("batching off")."""
    from google.protobuf import text_format

    from serving.repository import read_config

    shutil.copytree(model_dir, dest)
    config = read_config(model_dir)
    config.ClearField("dynamic_batching")
    config.name = dest.name
    (dest / "config.pbtxt").write_text(text_format.MessageToString(config))


def served(model_dir: Path, concurrencies: list[int], window_ms: int, workdir: Path) -> dict:
    repo = workdir / "repository"
    shutil.copytree(model_dir, repo / model_dir.name)
    nobatch = model_dir.name + "_nobatch"
    _unbatched_copy(model_dir, repo / nobatch)
    grpc_port, metrics_port = _free_port(), _free_port()
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqserve", "serve", "--model-repository", str(repo),
         "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    target, url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        from serving.probe import check

        deadline = time.monotonic() + 120
        while check(target, timeout=0.5)[0] != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "server.log").read_text())
            time.sleep(0.2)
        results: dict = {}
        for name, label in ((model_dir.name, "batching_on"), (nobatch, "batching_off")):
            results[label] = {}
            for c in concurrencies:
                n0, e0 = _scrape(url, name)
                r = perf_analyzer(target, name, c, window_ms, workdir / f"{label}-{c}.csv")
                n1, e1 = _scrape(url, name)
                r["avg_batch"] = (n1 - n0) / (e1 - e0) if e1 > e0 else 0.0
                results[label][c] = r
                print(f"  {label:13s} c={c:<3d} {r['inferences_per_s']:8.0f}/s  "
                      f"p50 {r['p50_ms']:.3f} ms  avg batch {r['avg_batch']:.2f}", flush=True)
        return results
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.repository) / args.model
    if not (model_dir / "config.pbtxt").is_file():
        print(f"seqserve bench: no model {args.model!r} in {args.repository} (run `make "
              "repository` first)", file=sys.stderr)
        return 2
    if not (PERF_VENV / "bin" / "perf_analyzer").exists():
        print("seqserve bench: perf_analyzer is missing: run `make tools`", file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    print(f"in-process onnxruntime ({args.model}, server session options):")
    ceiling = in_process(model_dir, [1, 8, 32], args.repeats, args.seconds)
    for b, r in ceiling.items():
        print(f"  batch {b:<3d} {r['latency_ms']:.3f} ms  {r['inferences_per_s']:8.0f}/s")
    print("served (perf_analyzer, batch-1 requests):")
    with tempfile.TemporaryDirectory() as tmp:
        serving = served(model_dir, concurrencies, args.window_ms, Path(tmp))
    on, off = serving["batching_on"], serving["batching_off"]
    summary = {
        "overhead_c1_ms": on[1]["avg_latency_ms"] - ceiling[1]["latency_ms"] if 1 in on
        else None,
        "throughput_c8": on[8]["inferences_per_s"] if 8 in on else None,
        "batching_gain_c8": on[8]["inferences_per_s"] / off[8]["inferences_per_s"]
        if 8 in on else None,
    }
    print("summary:", json.dumps(summary))
    result = {"suite": "serving", "model": args.model, "machine": machine(),
              "settings": vars(args) | {"handler": None}, "in_process": ceiling,
              "served": serving, "summary": summary,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = ROOT / "bench" / "results" / f"serving-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", default="model_repository", help="model repository")
    parser.add_argument("--model", default="forecaster_gru", help="model to measure")
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated")
    parser.add_argument("--window-ms", type=int, default=3000,
                        help="perf_analyzer measurement window")
    parser.add_argument("--repeats", type=int, default=5, help="in-process repeats")
    parser.add_argument("--seconds", type=float, default=1.0, help="in-process seconds/repeat")
