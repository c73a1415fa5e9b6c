"""Soak with faults: mixed load on one server for a long time while its parts are broken.

    seqserve bench soak [--repository model_repository] [--minutes 30] [--clients 32]

Serves a copy of the repository (`--model-control-mode poll`, so new versions can be dropped
in) and runs, for `--minutes`, `--clients` closed-loop clients of the project's own asyncio
stubs, split evenly over four kinds of call: V2 ModelInfer on a forecaster (each with its own
request id, which the reply must echo), the typed Forecast, Translate, and TranslateStream (a
stream must end with its `done` chunk). A prober calls ServerLive every 50 ms on a connection
and a process of its own. At fixed points of the run it injects, one after another:

    20%  SIGKILL to the translator's engine process
    40%  SIGSTOP to the new engine for 10 s (then SIGCONT; the watchdog, --engine-stall-secs,
         may have replaced it by then)
    60%  a corrupt new version of the forecaster (poll mode: the load fails, the old serves)
    80%  a good new version of the forecaster (poll mode: it replaces the old in place)

It reports errors by kind and status (split into those a fault may cause, UNAVAILABLE from the
translator within `--fault-window-secs` of an engine fault, and the rest), resident memory of
the server and its engine over time, p99 latency per kind over time, ServerLive's p99 in each
fault window and overall, and checks the goals:

- RSS growth after warm-up under 5% (median of the last tenth against the tenth after warm-up);
- no failure but those the faults cause, and those with retryable codes;
- every call answered once (a status or a reply; deadlines are generous, so a server that
  loses a call shows as DEADLINE_EXCEEDED), V2 replies carrying their request's id;
- ServerLive p99 under 50 ms throughout.

Writes JSON and a PNG (RSS and p99 against time, faults marked) to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.procfs import engine_children, memory_bytes

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("v2", "forecast", "translate", "stream")
SENTENCES = (
    "dreihundertzweiundvierzig",
    "siebenundsiebzig",
    "neunhundertneunundneunzig",
    "eins",
    "zwölftausendeinhundert",
    "vierzig",
)
CALL_DEADLINE_S = 60.0
GOALS = {"rss_growth": 0.05, "live_p99_ms": 50.0}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@dataclass
class Record:
    """Everything the run observed; times in seconds from the start of the load."""

    calls: list[tuple[float, str, str, float]] = field(default_factory=list)  # t, kind, code, s
    messages: dict[float, str] = field(default_factory=dict)  # a failed call's t: its details
    live: list[tuple[float, float]] = field(default_factory=list)  # t, seconds
    live_failures: list[tuple[float, str]] = field(default_factory=list)
    rss: list[tuple[float, float, float]] = field(default_factory=list)  # t, server, engines
    faults: list[tuple[float, str]] = field(default_factory=list)
    lost_ids: int = 0  # V2 replies with another request's id
    unfinished_streams: int = 0  # streams that ended without their done chunk


class Load:
    """The clients, the prober and the samplers against one server."""

    def __init__(self, target: str, pid: int, clients: int, seconds: float) -> None:
        self.target, self.pid, self.clients, self.seconds = target, pid, clients, seconds
        self.record = Record()
        self.t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def _requests(self, channel: object) -> dict:
        """One of each request, built from the server's own metadata."""
        from bench.forecast_requests import forecast_request, v2_request

        return {
            "infer": await v2_request(channel, "forecaster_gru"),
            "forecast": await forecast_request(channel, "forecaster_lstm"),
        }

    async def _client(self, index: int, kind: str, requests: dict) -> None:
        import grpc

        from protos.inference import grpc_service_pb2_grpc as pb_grpc
        from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as fgrpc
        from protos.seqserve.translate.v1 import translate_service_pb2 as tpb
        from protos.seqserve.translate.v1 import translate_service_pb2_grpc as tgrpc

        async with grpc.aio.insecure_channel(self.target) as channel:
            v2, fc = pb_grpc.GRPCInferenceServiceStub(channel), fgrpc.ForecasterStub(channel)
            tr = tgrpc.TranslatorStub(channel)
            n = 0
            while self.now() < self.seconds:
                n += 1
                started = time.monotonic()
                code = "OK"
                try:
                    if kind == "v2":
                        msg = type(requests["infer"])()
                        msg.CopyFrom(requests["infer"])  # each call its own id
                        msg.id = f"c{index}-{n}"
                        reply = await v2.ModelInfer(msg, timeout=CALL_DEADLINE_S)
                        if reply.id != msg.id:
                            self.record.lost_ids += 1
                    elif kind == "forecast":
                        await fc.Forecast(requests["forecast"], timeout=CALL_DEADLINE_S)
                    elif kind == "translate":
                        await tr.Translate(
                            tpb.TranslateRequest(
                                model_name="translator", sentences=[SENTENCES[n % len(SENTENCES)]]
                            ),
                            timeout=CALL_DEADLINE_S,
                        )
                    else:
                        done = False
                        async for chunk in tr.TranslateStream(
                            tpb.TranslateRequest(
                                model_name="translator", sentences=[SENTENCES[n % len(SENTENCES)]]
                            ),
                            timeout=CALL_DEADLINE_S,
                        ):
                            done = done or chunk.done
                        if not done:
                            self.record.unfinished_streams += 1
                except grpc.aio.AioRpcError as err:
                    code = err.code().name
                    self.record.messages[started - self.t0] = err.details() or ""
                self.record.calls.append(
                    (started - self.t0, kind, code, time.monotonic() - started)
                )
                if code == "UNAVAILABLE":
                    await asyncio.sleep(0.05)  # what a client's back-off does

    async def _prober(self) -> None:
        """ServerLive from a process of its own: on the load generator's event loop, the
        client's own delays would be measured as the server's."""
        import multiprocessing as mp

        context = mp.get_context("spawn")
        results = context.Queue()
        process = context.Process(
            target=_probe, args=(self.target, self.t0, self.seconds, results), daemon=True
        )
        process.start()
        live, failures = await asyncio.to_thread(results.get)
        await asyncio.to_thread(process.join, 30)
        self.record.live.extend(live)
        self.record.live_failures.extend(failures)

    async def _sampler(self, every_s: float) -> None:
        while self.now() < self.seconds:
            engines = [r for r in (memory_bytes(p) for p in engine_children(self.pid)) if r]
            server = memory_bytes(self.pid)
            if server is not None:  # MiB
                self.record.rss.append((self.now(), server / 2**20, sum(engines) / 2**20))
            await asyncio.sleep(every_s)

    async def _faults(self, repo: Path) -> None:
        plan = [
            (0.2, "engine SIGKILL"),
            (0.4, "engine SIGSTOP 10 s"),
            (0.6, "corrupt new version"),
            (0.8, "good new version"),
        ]
        for at, name in plan:
            await asyncio.sleep(max(0.0, at * self.seconds - self.now()))
            self.record.faults.append((self.now(), name))
            print(f"  {self.now():7.1f} s  fault: {name}", flush=True)
            engines = engine_children(self.pid)
            if name == "engine SIGKILL" and engines:
                os.kill(engines[0], signal.SIGKILL)
            elif name == "engine SIGSTOP 10 s" and engines:
                os.kill(engines[0], signal.SIGSTOP)
                await asyncio.sleep(10)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(engines[0], signal.SIGCONT)
            elif name == "corrupt new version":
                _drop_version(repo / "forecaster_gru", b"this is not an onnx file")
            elif name == "good new version":
                model = repo / "forecaster_gru"
                shutil.rmtree(model / _newest(model))  # the corrupt one goes
                _drop_version(model, (model / _newest(model) / "model.onnx").read_bytes())

    async def run(self, repo: Path, sample_s: float) -> Record:
        import grpc

        async with grpc.aio.insecure_channel(self.target) as channel:
            requests = await self._requests(channel)
        self.t0 = time.monotonic()
        tasks = [self._client(i, KINDS[i % len(KINDS)], requests) for i in range(self.clients)]
        await asyncio.gather(*tasks, self._prober(), self._sampler(sample_s), self._faults(repo))
        return self.record


def _probe(target: str, t0: float, seconds: float, results: object) -> None:
    """The prober's process: ServerLive every 50 ms on a connection of its own until the end
    of the load (times from `t0`, the load's start on the system's monotonic clock)."""

    async def main() -> tuple[list, list]:
        import grpc

        from protos.inference import grpc_service_pb2 as pb
        from protos.inference import grpc_service_pb2_grpc as pb_grpc

        live, failures = [], []
        async with grpc.aio.insecure_channel(target) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() - t0 < seconds:
                started = time.monotonic()
                try:
                    await v2.ServerLive(pb.ServerLiveRequest(), timeout=5)
                    live.append((started - t0, time.monotonic() - started))
                except grpc.aio.AioRpcError as err:
                    failures.append((started - t0, err.code().name))
                await asyncio.sleep(0.05)
        return live, failures

    results.put(asyncio.run(main()))  # type: ignore[attr-defined]


def _newest(model_dir: Path) -> str:
    return str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()))


def _drop_version(model_dir: Path, onnx: bytes) -> None:
    """A new version written aside, then renamed in, as `seqserve export` does."""
    version = str(int(_newest(model_dir)) + 1)
    staging = model_dir.parent.parent / f".staging-{version}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(onnx)
    staging.rename(model_dir / version)


def summarize(
    record: Record, seconds: float, warmup_s: float, window_s: float, fault_window_s: float
) -> dict:
    engine_faults = [t for t, name in record.faults if name.startswith("engine")]
    errors: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    caused: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    unexpected: list[tuple[float, str, str, str]] = []  # when (beside the faults'), and why
    for t, kind, code, took in record.calls:
        if code == "OK":
            continue
        # In flight at some point of a fault's window (a call started just before the kill
        # and answered after it is the fault's too).
        near = any(t <= f + fault_window_s and t + took >= f for f in engine_faults)
        if near and kind in ("translate", "stream") and code == "UNAVAILABLE":
            caused[kind][code] += 1
        else:
            errors[kind][code] += 1
            unexpected.append((round(t, 3), kind, code, record.messages.get(t, "")))
    calls = {k: sum(1 for c in record.calls if c[1] == k) for k in KINDS}
    p99_series = []
    t = 0.0
    while t < seconds:
        row = {"t": t}
        for k in KINDS:
            row[k] = (
                _p99(
                    [
                        d
                        for s, kind, code, d in record.calls
                        if kind == k and code == "OK" and t <= s < t + window_s
                    ]
                )
                * 1e3
            )
        p99_series.append(row)
        t += window_s
    after = [r for r in record.rss if r[0] >= warmup_s]
    tenth = max(1, len(after) // 10)
    start_rss = statistics.median(r[1] + r[2] for r in after[:tenth]) if after else float("nan")
    end_rss = statistics.median(r[1] + r[2] for r in after[-tenth:]) if after else float("nan")
    live_ms = [d * 1e3 for _, d in record.live]
    live_by_fault = {
        name: _p99([d * 1e3 for t, d in record.live if f <= t <= f + fault_window_s])
        for f, name in record.faults
    }
    result = {
        "calls": calls,
        "unexpected_errors": {k: dict(v) for k, v in errors.items()},
        "caused_by_faults": {k: dict(v) for k, v in caused.items()},
        "unexpected_at": unexpected[:100],
        "lost_ids": record.lost_ids,
        "unfinished_streams": record.unfinished_streams,
        "live": {
            "probes": len(live_ms),
            "p99_ms": _p99(live_ms),
            "max_ms": max(live_ms, default=float("nan")),
            "failures": len(record.live_failures),
            "p99_ms_by_fault": live_by_fault,
        },
        "rss_mib": {
            "after_warmup": start_rss,
            "at_end": end_rss,
            "growth": end_rss / start_rss - 1 if after else float("nan"),
        },
        "p99_ms_over_time": p99_series,
        "faults": record.faults,
        "rss_series": record.rss,
    }
    result["goals"] = {
        "rss_growth_under_5pct": result["rss_mib"]["growth"] < GOALS["rss_growth"],
        "only_fault_failures": not errors
        and not record.lost_ids
        and not record.unfinished_streams
        and not record.live_failures,
        "fault_failures_retryable": all(
            code == "UNAVAILABLE" for v in caused.values() for code in v
        ),
        "live_p99_under_50ms": result["live"]["p99_ms"] < GOALS["live_p99_ms"]
        and all(v < GOALS["live_p99_ms"] for v in live_by_fault.values() if v == v),
    }
    return result


def plot(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    rss = result["rss_series"]
    top.plot([r[0] for r in rss], [r[1] for r in rss], label="server")
    top.plot([r[0] for r in rss], [r[2] for r in rss], label="translator engine")
    top.set_ylabel("resident MiB")
    for kind in KINDS:
        rows = result["p99_ms_over_time"]
        bottom.plot([r["t"] for r in rows], [r[kind] for r in rows], label=kind)
    bottom.set_ylabel("p99 ms (successful calls)")
    bottom.set_yscale("log")
    bottom.set_xlabel("seconds")
    for axis in (top, bottom):
        for t, name in result["faults"]:
            axis.axvline(t, color="grey", linestyle=":")
            if axis is top:
                axis.annotate(
                    name, (t, axis.get_ylim()[1]), fontsize=7, rotation=90, va="top", ha="right"
                )
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def run(args: argparse.Namespace) -> int:
    source = Path(args.repository)
    for name in ("forecaster_gru", "forecaster_lstm", "translator"):
        if not (source / name / "config.pbtxt").is_file():
            print(
                f"seqserve bench soak: no model {name!r} in {source} (run `make repository`)",
                file=sys.stderr,
            )
            return 2
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "model_repository"
        shutil.copytree(source, repo)
        port, metrics = _free_port(), _free_port()
        log = Path(tmp) / "server.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "seqserve",
                    "serve",
                    "--model-repository",
                    str(repo),
                    "--http-port",
                    "0",
                    "--grpc-port",
                    str(port),
                    "--metrics-port",
                    str(metrics),
                    "--model-control-mode",
                    "poll",
                    "--repository-poll-secs",
                    "2",
                    "--engine-stall-secs",
                    str(args.engine_stall_secs),
                    "--frontend",
                    args.frontend,
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            from serving.probe import check

            deadline = time.monotonic() + 300
            while check(f"127.0.0.1:{port}", timeout=0.5)[0] != 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(log.read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.1)
            print(
                f"soak: {args.clients} clients for {args.minutes:g} min "
                f"({args.frontend} front end, engine stall {args.engine_stall_secs:g} s)"
            )
            record = asyncio.run(
                Load(f"127.0.0.1:{port}", proc.pid, args.clients, seconds).run(
                    repo, args.sample_secs
                )
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(120)
        result = summarize(
            record, seconds, args.warmup_secs, args.window_secs, args.fault_window_secs
        )
        result["exit_code"] = code
        result["server_log_tail"] = log.read_text().splitlines()[-40:]
    result["settings"] = {k: v for k, v in vars(args).items() if k != "handler"}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"soak-{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    png = plot(result, out_dir / f"soak-{stamp}.png")
    shown = (
        "calls",
        "unexpected_errors",
        "unexpected_at",
        "caused_by_faults",
        "lost_ids",
        "unfinished_streams",
        "live",
        "rss_mib",
        "goals",
        "exit_code",
    )
    print(json.dumps({k: result[k] for k in shown}, indent=1, default=str))
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0 if all(result["goals"].values()) and code == 0 else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository",
        default="model_repository",
        help="repository with forecaster_gru, forecaster_lstm and translator "
        "(copied: the run adds versions to its copy)",
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the load")
    parser.add_argument(
        "--clients",
        type=int,
        default=32,
        help="closed-loop clients, split over V2, Forecast, Translate, stream",
    )
    parser.add_argument(
        "--engine-stall-secs",
        type=float,
        default=5.0,
        help="the server's --engine-stall-secs (below the 10 s SIGSTOP, so the "
        "watchdog's replacement is part of the run)",
    )
    parser.add_argument("--frontend", default="auto", choices=["auto", "native", "python"])
    parser.add_argument("--sample-secs", type=float, default=2.0, help="RSS sampling period")
    parser.add_argument(
        "--warmup-secs", type=float, default=60.0, help="RSS growth is measured after this"
    )
    parser.add_argument("--window-secs", type=float, default=30.0, help="p99 time buckets")
    parser.add_argument(
        "--fault-window-secs",
        type=float,
        default=30.0,
        help="after an engine fault, translator UNAVAILABLE counts as caused",
    )
    parser.add_argument(
        "--results-dir", default=str(ROOT / "bench" / "results"), help="where the JSON and PNG go"
    )
