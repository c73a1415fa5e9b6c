"""Serving benchmark: in-process onnxruntime ceiling vs the served model, side by side.

    seqserve bench serving [--repository model_repository] [--model forecaster_gru]

In one run, on one machine:
1. the in-process ceiling: the model's ONNX file on an onnxruntime session with exactly the
   server's session options, at batch 1, 8 and 32 (median of repeats);
2. start-up: seconds from `seqserve serve` to a SERVING health check, and resident memory,
   with the whole repository;
3. the served model with batch-1 requests at each concurrency, through `perf_analyzer`
   (Triton's own load generator, C++) and through a closed-loop `tritonclient` asyncio client
   (bench/loadgen.py), with dynamic batching as configured and with it removed from the config
   ("batching off": same server, same file, a second model name); the average batch size
   comes from the server's nv_inference_count / nv_inference_exec_count;
4. front ends (`--frontends python,native`) and worker processes (`--workers 1,2`), each a
   side-by-side of servers started once (`seqserve serve --frontend F`, `--workers N`), the
   first load generator with one connection per client (the kernel spreads connections over
   workers, not requests), repeats interleaved, the ratio to the first per repeat; the last
   front end named serves every other measurement;
5. the gRPC floor: the same load against bench/floor_server.py, a grpc.aio server that answers
   with zeros and computes nothing, and (when the native front end serves) the native floor,
   its fast path answering zeros without onnxruntime, and the bare floor, zeros from C++ with
   no Python at all, so served latency splits into transport (the floor), seqserve's own work,
   and onnxruntime.
Prints a table and writes JSON (machine, versions, settings, medians) and a PNG of latency and
throughput against concurrency to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from bench.procfs import memory_bytes

ROOT = Path(__file__).resolve().parents[1]
PERF_VENV = ROOT / ".tools" / "perf_analyzer"
TRITON_VENV = ROOT / ".tools" / "tritonclient"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# environment variables that cap the instruction sets of seqserve's native code, MKL,
# CTranslate2 and oneDNN: set, they simulate an older CPU (docs/benchmarks.md)
ISA_CAPS = (
    "SEQSERVE_NATIVE_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "CT2_FORCE_CPU_ISA",
    "ONEDNN_MAX_CPU_ISA",
)


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "versions": {p: metadata.version(p) for p in ("onnxruntime", "grpcio", "numpy")},
        "isa_caps": {name: os.environ[name] for name in ISA_CAPS if name in os.environ},
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
    version = select_versions(
        config, sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    )[-1]
    settings = Settings(model_repository=model_dir.parent)
    session = ort.InferenceSession(
        str(model_dir / str(version) / "model.onnx"),
        session_options(config, settings),
        providers=["CPUExecutionProvider"],
    )
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
        out[b] = {
            "latency_ms": ms,
            "inferences_per_s": b / ms * 1e3,
            "spread_ms": [min(medians) * 1e3, max(medians) * 1e3],
        }
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


# A noisy shared machine: accept a wider spread, then (perf_analyzer's own advice) a longer
# window, rather than give up; what was used is noted in the JSON. (stability %, times the window)
LADDER: tuple[tuple[int, int], ...] = ((25, 1), (60, 1), (1000, 1), (1000, 4))


def perf_analyzer(
    target: str,
    model: str,
    concurrency: int,
    window_ms: int,
    out_csv: Path,
    own_connections: bool = False,
    ladder: tuple[tuple[int, int], ...] = LADDER,
    protocol: str = "grpc",
) -> dict:
    exe = PERF_VENV / "bin" / "perf_analyzer"
    libs = sorted(PERF_VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs[0]) if libs else "")
    if own_connections:
        # tritonclient's C++ client shares one gRPC channel (one connection) among up to six
        # clients; one each lets SO_REUSEPORT spread the clients over worker processes.
        env["TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT"] = "1"
    cmd = [
        str(exe),
        "-m",
        model,
        "-u",
        target,
        "-i",
        protocol,
        "-b",
        "1",
        "--concurrency-range",
        str(concurrency),
        "-p",
        str(window_ms),
        "-s",
        "25",
        "-r",
        "15",
        "-f",
        str(out_csv),
    ]
    for stability, times in ladder:
        window = times * window_ms
        cmd[cmd.index("-s") + 1] = str(stability)
        cmd[cmd.index("-p") + 1] = str(window)
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        # perf_analyzer prints its settings to stdout and the failure to stderr.
        if run.returncode == 0 or "stable measurement" not in run.stdout + run.stderr:
            break
    if run.returncode != 0:
        raise RuntimeError(
            f"perf_analyzer failed ({run.returncode}): {run.stdout[-1500:]}{run.stderr[-1500:]}"
        )
    with out_csv.open() as f:
        row = next(csv.DictReader(f))
    # A server without statistics (the gRPC floor) gets fewer columns: absent ones are 0.
    us = {k: float(v) for k, v in row.items() if k and v not in (None, "")}
    parts = (
        "Client Send",
        "Network+Server Send/Recv",
        "Server Queue",
        "Server Compute Input",
        "Server Compute Infer",
        "Server Compute Output",
        "Client Recv",
    )
    return {
        "inferences_per_s": us["Inferences/Second"],
        # Without the server's breakdown, Little's law for a closed loop: c / throughput.
        "avg_latency_ms": sum(us.get(k, 0.0) for k in parts) / 1e3
        if "Network+Server Send/Recv" in us
        else concurrency / us["Inferences/Second"] * 1e3,
        "p50_ms": us["p50 latency"] / 1e3,
        "p90_ms": us["p90 latency"] / 1e3,
        "p99_ms": us["p99 latency"] / 1e3,
        "server_queue_ms": us.get("Server Queue", 0.0) / 1e3,
        "server_infer_ms": us.get("Server Compute Infer", 0.0) / 1e3,
        "stability_percent": stability,
        "window_ms": window,
        "csv": out_csv.read_text(),  # perf_analyzer's own figures, kept whole
    }


def _alone(model_dir: Path, workdir: Path) -> Path:
    """A repository holding only this model (copied once per run)."""
    repo = workdir / "repository-variants"
    if not repo.exists():
        shutil.copytree(model_dir, repo / model_dir.name)
    return repo


def _is_forecaster(model_dir: Path) -> bool:
    """Whether the typed Forecast API serves this model (its config carries a horizon)."""
    from serving.repository import read_config

    return "horizon" in read_config(model_dir).parameters


def _unbatched_copy(model_dir: Path, dest: Path) -> None:
    """The same model with its `dynamic_batching` removed ("batching off")."""
    from google.protobuf import text_format

    from serving.repository import read_config

    shutil.copytree(model_dir, dest)
    config = read_config(model_dir)
    config.ClearField("dynamic_batching")
    config.name = dest.name
    (dest / "config.pbtxt").write_text(text_format.MessageToString(config))


@contextlib.contextmanager
def server(
    repo: Path,
    workdir: Path,
    workers: int = 1,
    frontend: str = "python",
    flags: tuple[str, ...] = (),
    http: bool = False,
) -> Iterator[dict]:
    """A real `seqserve serve` process on free loopback ports, until health says SERVING
    (and, with workers, until the merged /metrics counts them all).

    Yields target, metrics URL, pid and the seconds from process start to ready, and with
    `http` the HTTP port's host:port (else HTTP is off)."""
    from serving.probe import check

    def ready(target: str, metrics: str) -> bool:
        if check(target, timeout=0.5)[0] != 0:
            return False
        if workers == 1:
            return True
        try:
            with urllib.request.urlopen(metrics, timeout=5) as resp:
                return f"seqserve_workers {workers}.0" in resp.read().decode()
        except OSError:
            return False

    grpc_port, metrics_port = _free_port(), _free_port()
    http_port = _free_port() if http else 0
    log_path = workdir / f"server-{grpc_port}.log"
    with log_path.open("w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "seqserve",
                "serve",
                "--model-repository",
                str(repo),
                "--http-port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
                "--metrics-port",
                str(metrics_port),
                "--workers",
                str(workers),
                "--frontend",
                frontend,
                *flags,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        target = f"127.0.0.1:{grpc_port}"
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        try:
            deadline = time.monotonic() + 300
            while not ready(target, metrics):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text())
                time.sleep(0.05)
            yield {
                "target": target,
                "http_target": f"127.0.0.1:{http_port}",
                "metrics": metrics,
                "pid": proc.pid,
                "ready_s": time.perf_counter() - t0,
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    rss = memory_bytes(pid)
    return float("nan") if rss is None else rss / 2**20


def startup(repo: Path, workdir: Path, repeats: int) -> dict:
    """Seconds from `seqserve serve` to ready and resident memory, with the whole repository."""
    times, rss = [], []
    for _ in range(repeats):
        with server(repo, workdir) as srv:
            times.append(srv["ready_s"])
            rss.append(rss_mib(srv["pid"]))
    return {
        "models": sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file()),
        "ready_s": statistics.median(times),
        "ready_spread_s": [min(times), max(times)],
        "rss_mib": statistics.median(rss),
    }


def loadgen(
    target: str, model: str, concurrency: int, seconds: float, connections: int = 1
) -> dict:
    """The closed-loop tritonclient (asyncio gRPC) load generator, from its tool venv."""
    cmd = [
        str(TRITON_VENV / "bin" / "python"),
        str(ROOT / "bench" / "loadgen.py"),
        "--url",
        target,
        "--model",
        model,
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(seconds),
        "--connections",
        str(connections),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if run.returncode != 0:
        raise RuntimeError(f"loadgen failed ({run.returncode}): {run.stderr[-1500:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def served(
    model_dir: Path,
    concurrencies: list[int],
    window_ms: int,
    generators: list[str],
    workdir: Path,
    frontend: str,
) -> dict:
    repo = workdir / "repository"
    shutil.copytree(model_dir, repo / model_dir.name)
    nobatch = model_dir.name + "_nobatch"
    _unbatched_copy(model_dir, repo / nobatch)
    results: dict = {"frontend": frontend}
    with server(repo, workdir, frontend=frontend) as srv:
        for name, label in ((model_dir.name, "batching_on"), (nobatch, "batching_off")):
            for gen in generators:
                results.setdefault(gen, {}).setdefault(label, {})
                for c in concurrencies:
                    n0, e0 = _scrape(srv["metrics"], name)
                    if gen == "perf_analyzer":
                        r = perf_analyzer(
                            srv["target"], name, c, window_ms, workdir / f"{label}-{c}.csv"
                        )
                    else:
                        r = loadgen(srv["target"], name, c, window_ms / 1e3)
                    n1, e1 = _scrape(srv["metrics"], name)
                    r["avg_batch"] = (n1 - n0) / (e1 - e0) if e1 > e0 else 0.0
                    results[gen][label][c] = r
                    print(
                        f"  {gen:13s} {label:13s} c={c:<3d} {r['inferences_per_s']:8.0f}/s  "
                        f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
                        f"avg batch {r['avg_batch']:.2f}",
                        flush=True,
                    )
        results["rss_mib_after_load"] = rss_mib(srv["pid"])
    return results


def side_by_side(
    model_dir: Path,
    variants: dict[str, dict],
    concurrencies: list[int],
    seconds: float,
    repeats: int,
    generator: str,
    workdir: Path,
) -> dict:
    """Servers in several variants (`server()` keyword arguments: workers, frontend, flags), all
    started once, measured in turn (repeats interleaved) by `generator` with one connection per
    client (the kernel spreads connections over workers, not requests); the ratio of each
    variant to the first, per repeat, then the median."""
    repo = _alone(model_dir, workdir)
    runs: dict = {v: {c: [] for c in concurrencies} for v in variants}
    with contextlib.ExitStack() as stack:
        servers = {
            v: stack.enter_context(server(repo, workdir, **kw)) for v, kw in variants.items()
        }
        for r in range(repeats):
            for c in concurrencies:
                for v in variants:
                    target = servers[v]["target"]
                    res = (
                        perf_analyzer(
                            target,
                            model_dir.name,
                            c,
                            int(seconds * 1e3),
                            workdir / f"variant-{v}-{c}-{r}.csv",
                            own_connections=True,
                        )
                        if generator == "perf_analyzer"
                        else loadgen(target, model_dir.name, c, seconds, connections=c)
                    )
                    runs[v][c].append(res["inferences_per_s"])
                    print(
                        f"  repeat {r} c={c:<3d} {v:>10s}: {res['inferences_per_s']:8.0f}/s "
                        f"p50 {res['p50_ms']:.3f} ms",
                        flush=True,
                    )
    out: dict = {
        "per_s": runs,
        "median_per_s": {
            v: {c: statistics.median(x) for c, x in by_c.items()} for v, by_c in runs.items()
        },
    }
    base = next(iter(variants))
    out["ratio_to_first"] = {  # per repeat, same window order, then the median
        v: {
            c: statistics.median(a / b for a, b in zip(runs[v][c], runs[base][c], strict=True))
            for c in concurrencies
        }
        for v in list(variants)[1:]
    }
    return out


def protocols(
    model_dir: Path,
    concurrencies: list[int],
    seconds: float,
    repeats: int,
    workdir: Path,
    frontend: str,
) -> dict:
    """One server, perf_analyzer over gRPC then over HTTP (KServe V2 REST, binary tensors:
    perf_analyzer's default) in turn, repeats interleaved: the same client binary, model,
    batch size and concurrency on both sides; the ratio HTTP / gRPC per repeat, then the
    median."""
    runs: dict = {p: {c: [] for c in concurrencies} for p in ("grpc", "http")}
    with server(_alone(model_dir, workdir), workdir, frontend=frontend, http=True) as srv:
        for r in range(repeats):
            for c in concurrencies:
                for protocol, target in (("grpc", srv["target"]), ("http", srv["http_target"])):
                    res = perf_analyzer(
                        target,
                        model_dir.name,
                        c,
                        int(seconds * 1e3),
                        workdir / f"protocol-{protocol}-{c}-{r}.csv",
                        protocol=protocol,
                    )
                    runs[protocol][c].append(res["inferences_per_s"])
                    print(
                        f"  repeat {r} c={c:<3d} {protocol:>4s}: {res['inferences_per_s']:8.0f}/s "
                        f"p50 {res['p50_ms']:.3f} ms",
                        flush=True,
                    )
    return {
        "per_s": runs,
        "median_per_s": {
            p: {c: statistics.median(x) for c, x in by_c.items()} for p, by_c in runs.items()
        },
        "http_to_grpc": {
            c: statistics.median(
                h / g for h, g in zip(runs["http"][c], runs["grpc"][c], strict=True)
            )
            for c in concurrencies
        },
    }


def floor(
    model_dir: Path,
    concurrencies: list[int],
    window_ms: int,
    generator: str,
    workdir: Path,
    native: bool = False,
    bare: bool = False,
) -> dict:
    """The same load against bench/floor_server.py: a grpc.aio server that computes nothing
    (with `native`, the native front end's fast path in front of it, answering zeros from a
    Python runner; with `bare` too, from C++ alone)."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.floor_server",
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
            *(["--native"] if native else []),
            *(["--bare"] if bare else []),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bench.floor_server did not start")
            time.sleep(0.05)
        results = {}
        for c in concurrencies:
            r = (
                perf_analyzer(target, model_dir.name, c, window_ms, workdir / f"floor-{c}.csv")
                if generator == "perf_analyzer"
                else loadgen(target, model_dir.name, c, window_ms / 1e3)
            )
            results[c] = r
            label = "bare floor" if bare else "native floor" if native else "grpc floor"
            print(
                f"  {generator:13s} {label:13s} c={c:<3d} "
                f"{r['inferences_per_s']:8.0f}/s  p50 {r['p50_ms']:.3f} ms  "
                f"p99 {r['p99_ms']:.3f} ms",
                flush=True,
            )
        return results
    finally:
        proc.terminate()
        proc.wait(30)


def plot(result: dict, path: Path) -> Path | None:
    """Latency and throughput against concurrency, batching on vs off (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:  # serving-only installs have no matplotlib
        return None
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    for gen in ("perf_analyzer", "tritonclient"):
        for label, style in (("batching_on", "-o"), ("batching_off", "--s")):
            runs = result["served"].get(gen, {}).get(label)
            if not runs:
                continue
            cs = sorted(runs, key=int)
            lat.plot(
                [int(c) for c in cs],
                [runs[c]["p50_ms"] for c in cs],
                style,
                label=f"{gen}, {label.replace('_', ' ')}",
            )
            thr.plot(
                [int(c) for c in cs],
                [runs[c]["inferences_per_s"] for c in cs],
                style,
                label=f"{gen}, {label.replace('_', ' ')}",
            )
    runs = result.get("grpc_floor", {})
    cs = sorted(runs, key=int)
    if cs:
        lat.plot(
            [int(c) for c in cs],
            [runs[c]["p50_ms"] for c in cs],
            ":^",
            color="grey",
            label="gRPC floor (computes nothing)",
        )
        thr.plot(
            [int(c) for c in cs],
            [runs[c]["inferences_per_s"] for c in cs],
            ":^",
            color="grey",
            label="gRPC floor (computes nothing)",
        )
    ceiling = result["in_process"]
    thr.axhline(
        ceiling["1"]["inferences_per_s"],
        color="grey",
        lw=0.8,
        label="in-process onnxruntime, batch 1",
    )
    for ax, title in ((lat, "p50 latency (ms)"), (thr, "inferences/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (batch-1 requests)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    thr.legend(fontsize=7)
    fig.suptitle(
        f"seqserve serving {result['model']} (load avg "
        f"{result['machine']['load_avg'][0]:.1f}, {result['machine']['cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    repository = Path(args.repository)
    model_dir = repository / args.model
    if not (model_dir / "config.pbtxt").is_file():
        print(
            f"seqserve bench: no model {args.model!r} in {args.repository} (run `make "
            "repository` first)",
            file=sys.stderr,
        )
        return 2
    generators = args.load_generator.split(",")
    for gen, exe in (
        ("perf_analyzer", PERF_VENV / "bin" / "perf_analyzer"),
        ("tritonclient", TRITON_VENV / "bin" / "python"),
    ):
        if gen in generators and not exe.exists():
            print(f"seqserve bench: {exe} is missing: run `make tools`", file=sys.stderr)
            return 2
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    print(f"in-process onnxruntime ({args.model}, server session options):")
    ceiling = in_process(model_dir, [1, 8, 32], args.repeats, args.seconds)
    for b, r in ceiling.items():
        print(f"  batch {b:<3d} {r['latency_ms']:.3f} ms  {r['inferences_per_s']:8.0f}/s")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"start-up with the whole repository ({repository}):")
        boot = startup(repository, Path(tmp), args.startup_repeats)
        print(
            f"  ready in {boot['ready_s']:.2f} s, {boot['rss_mib']:.0f} MiB resident "
            f"({', '.join(boot['models'])})"
        )
        frontends = [f for f in args.frontends.split(",") if f]
        print(f"served (batch-1 requests, {frontends[-1]} front end):")
        serving = served(
            model_dir, concurrencies, args.window_ms, generators, Path(tmp), frontends[-1]
        )
        compared = None
        if len(frontends) > 1:
            print(f"front ends {frontends} ({generators[0]}, one connection per client):")
            compared = side_by_side(
                model_dir,
                {f: {"frontend": f} for f in frontends},
                concurrencies,
                args.window_ms / 1e3,
                args.worker_repeats,
                generators[0],
                Path(tmp),
            )
        scaling = None
        worker_counts = [int(n) for n in args.workers.split(",") if n]
        if len(worker_counts) > 1:
            print(
                f"worker processes {worker_counts} ({generators[0]}, one connection per "
                f"client, {frontends[-1]} front end):"
            )
            scaling = side_by_side(
                model_dir,
                {str(n): {"workers": n, "frontend": frontends[-1]} for n in worker_counts},
                [c for c in concurrencies if c >= 2] or concurrencies,
                args.window_ms / 1e3,
                args.worker_repeats,
                generators[0],
                Path(tmp),
            )
        budgets = None
        budget_values = [b for b in args.budgets.split(",") if b]
        if len(budget_values) > 1:
            print(
                f"request-bytes budgets {budget_values} (--max-request-bytes-in-flight, "
                f"{generators[0]}, one connection per client, {frontends[-1]} front end):"
            )
            budgets = side_by_side(
                model_dir,
                {
                    b: {"frontend": frontends[-1], "flags": ("--max-request-bytes-in-flight", b)}
                    for b in budget_values
                },
                concurrencies,
                args.window_ms / 1e3,
                args.worker_repeats,
                generators[0],
                Path(tmp),
            )
        typed = None
        typed_frontends = [f for f in args.typed_frontends.split(",") if f]
        if typed_frontends and _is_forecaster(model_dir):
            from bench.typed_load import typed_vs_v2

            typed = {}
            for f in typed_frontends:
                print(
                    f"typed Forecast beside V2 ModelInfer ({f} front end, the project's "
                    "grpc.aio stubs, one connection per client):"
                )
                with server(_alone(model_dir, Path(tmp)), Path(tmp), frontend=f) as running:
                    typed[f] = typed_vs_v2(
                        running["target"],
                        model_dir.name,
                        concurrencies,
                        args.window_ms / 1e3,
                        args.worker_repeats,
                    )
        over_http = None
        if [p for p in args.protocols.split(",") if p] == ["grpc", "http"]:
            print(f"gRPC against HTTP (perf_analyzer -i grpc|http, {frontends[-1]} front end):")
            over_http = protocols(
                model_dir,
                concurrencies,
                args.window_ms / 1e3,
                args.worker_repeats,
                Path(tmp),
                frontends[-1],
            )
        print("gRPC floor (bench/floor_server.py: grpc.aio, computes nothing):")
        grpc_floor = floor(model_dir, concurrencies, args.window_ms, generators[0], Path(tmp))
        native_floor = bare_floor = None
        if frontends[-1] == "native":
            print("native floor (bench/floor_server.py --native: the fast path, zeros):")
            native_floor = floor(
                model_dir, concurrencies, args.window_ms, generators[0], Path(tmp), native=True
            )
            print("bare floor (bench/floor_server.py --native --bare: zeros from C++ alone):")
            bare_floor = floor(
                model_dir,
                concurrencies,
                args.window_ms,
                generators[0],
                Path(tmp),
                native=True,
                bare=True,
            )
    main = serving[generators[0]]
    own_floor = native_floor or grpc_floor  # the served front end's
    on, off = main["batching_on"], main["batching_off"]
    summary = {
        "load_generator": generators[0],
        "overhead_c1_ms": on[1]["avg_latency_ms"] - ceiling[1]["latency_ms"] if 1 in on else None,
        "throughput_c8": on[8]["inferences_per_s"] if 8 in on else None,
        "batching_gain_c8": on[8]["inferences_per_s"] / off[8]["inferences_per_s"]
        if 8 in on
        else None,
        "avg_batch_c8": on[8]["avg_batch"] if 8 in on else None,
        # Served latency = transport (the served front end's floor) + seqserve's own work +
        # onnxruntime.
        "floor_c1_ms": own_floor[1]["avg_latency_ms"] if 1 in own_floor else None,
        "seqserve_cost_c1_ms": on[1]["avg_latency_ms"]
        - own_floor[1]["avg_latency_ms"]
        - ceiling[1]["latency_ms"]
        if 1 in on
        else None,
        "floor_throughput_c8": own_floor[8]["inferences_per_s"] if 8 in own_floor else None,
        "grpc_floor_throughput_c8": grpc_floor[8]["inferences_per_s"] if 8 in grpc_floor else None,
        # No server on this machine answers perf_analyzer faster than the bare floor.
        "bare_floor_c1_ms": bare_floor[1]["avg_latency_ms"]
        if bare_floor and 1 in bare_floor
        else None,
        "ready_s": boot["ready_s"],
        "rss_mib": boot["rss_mib"],
        "frontend": frontends[-1],
        "frontend_ratio": compared["ratio_to_first"] if compared else None,
        "frontend_throughput_c8": {f: by_c.get(8) for f, by_c in compared["median_per_s"].items()}
        if compared
        else None,
        "workers_ratio": scaling["ratio_to_first"] if scaling else None,
        "budgets_ratio": budgets["ratio_to_first"] if budgets else None,
        "workers_throughput_c8": {n: by_c.get(8) for n, by_c in scaling["median_per_s"].items()}
        if scaling
        else None,
        "typed_to_v2": {f: t["typed_to_v2"] for f, t in typed.items()} if typed else None,
        "http_to_grpc": over_http["http_to_grpc"] if over_http else None,
    }
    print("summary:", json.dumps(summary))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {
        "suite": "serving",
        "model": args.model,
        "machine": machine(),
        "settings": vars(args) | {"handler": None},
        "in_process": ceiling,
        "startup": boot,
        "served": serving,
        "grpc_floor": grpc_floor,
        "native_floor": native_floor,
        "bare_floor": bare_floor,
        "frontends": compared,
        "workers": scaling,
        "budgets": budgets,
        "typed": typed,
        "protocols": over_http,
        "summary": summary,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"serving-{args.model}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
    if png := plot(json.loads(out.read_text()), out.with_suffix(".png")):
        print(f"wrote {png}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository",
        default="model_repository",
        help="model repository (start-up is measured with all of it)",
    )
    parser.add_argument("--model", default="forecaster_gru", help="model to measure")
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated")
    parser.add_argument(
        "--load-generator",
        default="perf_analyzer,tritonclient",
        help="perf_analyzer and/or tritonclient (asyncio closed loop); the first gives the summary",
    )
    parser.add_argument(
        "--window-ms", type=int, default=3000, help="measurement window per concurrency"
    )
    parser.add_argument("--repeats", type=int, default=5, help="in-process repeats")
    parser.add_argument("--seconds", type=float, default=1.0, help="in-process seconds/repeat")
    parser.add_argument(
        "--startup-repeats", type=int, default=3, help="server starts to time (median)"
    )
    parser.add_argument(
        "--frontends",
        default="python,native",
        help="front ends to compare side by side (`serve --frontend`); the "
        "last one serves the other measurements",
    )
    parser.add_argument(
        "--typed-frontends",
        default="python,native",
        help="front ends on which to measure the typed Forecast API beside V2 "
        "(a forecaster only; empty: skip)",
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="worker process counts to compare (`serve --workers`); one value skips the comparison",
    )
    parser.add_argument(
        "--budgets",
        default="",
        help="--max-request-bytes-in-flight values to compare side by side on "
        "the last of --frontends (e.g. 0,536870912: off against the default); "
        "fewer than two skip the comparison",
    )
    parser.add_argument(
        "--protocols",
        default="grpc,http",
        help="grpc,http: perf_analyzer over both on one server, in turn (KServe V2 REST "
        "against gRPC); empty: skip",
    )
    parser.add_argument(
        "--worker-repeats",
        type=int,
        default=3,
        help="interleaved repeats of the front-end, workers and budgets comparisons",
    )
    parser.add_argument(
        "--results-dir", default=str(ROOT / "bench" / "results"), help="where the JSON and PNG go"
    )
