"""`seqserve serve --workers N`: worker processes on one port, one merged /metrics, restarts,
a clean stop; and the merge rules on their own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.metrics_merge import merge
from serving.peers import read_status
from serving.servicers.statistics import add_statistics
from tests.conftest import ROOT, ServerProcess, free_port
from tests.serving.model_factory import AFFINE_CONFIG, add_model, affine
from tests.serving.v2 import outputs, request, scrape

pytestmark = pytest.mark.slow  # several server processes per test

X = np.arange(4, dtype=np.float32).reshape(1, 4)
READY = ("seqserve_model_ready", "model=affine,version=1")
SUCCESS = ("nv_inference_request_success", "model=affine,version=1")


def _wait(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except OSError:  # the endpoint is not up yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def _all_ready(server: ServerProcess, workers: int) -> bool:
    samples = scrape(server.metrics_url)
    return samples.get(("seqserve_workers", "")) == workers and samples.get(READY) == 1


def _workers_of(pid: int) -> list[int]:
    """The supervisor's worker processes (its spawned children)."""
    out = subprocess.run(
        ["pgrep", "-P", str(pid), "-f", "multiprocessing.spawn"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("workers")
    repo, tmp = root / "model_repository", root / "tmp"
    tmp.mkdir()
    add_model(repo, "affine", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    # the supervisor's status folder goes under TMPDIR: the test reads the workers' own ports
    server = ServerProcess(repo, "--workers", "2", env={**os.environ, "TMPDIR": str(tmp)})
    try:
        _wait(
            lambda: _all_ready(server, 2), "both workers ready in the merged /metrics", timeout=180
        )  # two interpreters importing onnxruntime on a loaded 2-core box
        yield server
    finally:
        assert server.terminate() == 0, server.output()


def _channel(target: str) -> grpc.Channel:
    # A channel of its own (no shared subchannel): a new TCP connection, which the kernel
    # gives to one of the workers.
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _worker_metrics(server: ServerProcess) -> list[dict[tuple[str, str], float]]:
    """Each worker's own /metrics, from the status files in the supervisor's folder."""
    tmp = Path(server.proc.args[server.proc.args.index("--model-repository") + 1]).parent
    files = sorted(tmp.glob("tmp/seqserve-workers-*/worker-*.json"))
    statuses = [read_status(f) for f in files]
    assert len(statuses) == 2 and None not in statuses, files
    return [scrape(f"http://127.0.0.1:{s['port']}/metrics") for s in statuses if s]


def test_connections_spread_over_the_workers_and_statistics_add_up(
    two_workers: ServerProcess,
) -> None:
    before = scrape(two_workers.metrics_url).get(SUCCESS, 0)
    channels = [_channel(two_workers.target) for _ in range(15)]
    try:
        stubs = [pb_grpc.GRPCInferenceServiceStub(ch) for ch in channels]
        for s in stubs:
            y = outputs(s.ModelInfer(request("affine", x=X), timeout=10))["y"]
            np.testing.assert_allclose(y, 2 * X + 1)
        per_worker = [m.get(SUCCESS, 0) for m in _worker_metrics(two_workers)]
        samples = scrape(two_workers.metrics_url)
        # every worker answers ModelStatistics for the whole server, whichever takes the call
        answers = [
            s.ModelStatistics(pb.ModelStatisticsRequest(name="affine"), timeout=10).model_stats[0]
            for s in stubs
        ]
    finally:
        for ch in channels:
            ch.close()
    assert all(n > 0 for n in per_worker), f"every connection went to one worker: {per_worker}"
    assert samples[SUCCESS] - before == 15
    assert sum(per_worker) == samples[SUCCESS]  # the merged /metrics is the sum
    for stats in answers:
        assert stats.inference_stats.success.count == samples[SUCCESS]
        assert stats.inference_count == samples[("nv_inference_count", "model=affine,version=1")]
        assert (
            stats.execution_count == samples[("nv_inference_exec_count", "model=affine,version=1")]
        )
        assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    assert samples[("seqserve_workers", "")] == 2
    assert samples[READY] == 1  # the minimum over the workers, not their sum


def test_statistics_of_workers_add_up_per_model_and_batch_size() -> None:
    def response(
        count: int, last: int, sizes: dict[int, int], name: str = "m"
    ) -> pb.ModelStatisticsResponse:
        reply = pb.ModelStatisticsResponse()
        entry = reply.model_stats.add(
            name=name,
            version="1",
            last_inference=last,
            inference_count=count,
            execution_count=len(sizes),
        )
        entry.inference_stats.success.count, entry.inference_stats.success.ns = count, 10 * count
        for size, ns in sizes.items():
            entry.batch_stats.add(batch_size=size).compute_infer.ns = ns
        return reply

    total = response(3, last=100, sizes={1: 5, 4: 7})
    other = response(2, last=200, sizes={2: 11, 4: 13})
    other.model_stats.add(name="only-there", version="1", inference_count=9)
    add_statistics(total, other)
    assert [(e.name, e.version) for e in total.model_stats] == [("m", "1")]
    m = total.model_stats[0]
    assert (m.inference_count, m.execution_count, m.last_inference) == (5, 4, 200)
    assert (m.inference_stats.success.count, m.inference_stats.success.ns) == (5, 50)
    assert [(b.batch_size, b.compute_infer.ns) for b in m.batch_stats] == [(1, 5), (2, 11), (4, 20)]


def test_a_dead_worker_is_restarted(two_workers: ServerProcess) -> None:
    pids = _workers_of(two_workers.proc.pid)
    assert len(pids) == 2, pids
    os.kill(pids[0], signal.SIGKILL)
    _wait(
        lambda: len(set(_workers_of(two_workers.proc.pid)) - set(pids)) == 1, "a new worker process"
    )
    _wait(lambda: _all_ready(two_workers, 2), "the new worker ready")
    with _channel(two_workers.target) as ch:
        reply = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request("affine", x=X), timeout=10)
        np.testing.assert_allclose(outputs(reply)["y"], 2 * X + 1)
    assert "exited with -9" in two_workers.output()


@contextlib.contextmanager
def _taken_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_a_port_in_use_fails_at_once(empty_repository: Path) -> None:
    with _taken_port() as port:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "seqserve",
                "serve",
                "--model-repository",
                str(empty_repository),
                "--workers",
                "2",
                "--http-port",
                "0",
                "--grpc-port",
                str(port),
                "--metrics-port",
                str(free_port()),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


TEXT = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="m",version="1"}} {n}
# HELP seqserve_model_ready 1 when the model version is ready
# TYPE seqserve_model_ready gauge
seqserve_model_ready{{model="m",version="1"}} {ready}
# HELP seqserve_request_duration_seconds Server-side request duration
# TYPE seqserve_request_duration_seconds histogram
seqserve_request_duration_seconds_bucket{{le="0.001",model="m",version="1"}} {n}
seqserve_request_duration_seconds_bucket{{le="+Inf",model="m",version="1"}} {n}
seqserve_request_duration_seconds_sum{{model="m",version="1"}} 0.5
seqserve_request_duration_seconds_created{{model="m",version="1"}} {created}
# HELP process_start_time_seconds Start time of the process
# TYPE process_start_time_seconds gauge
process_start_time_seconds {created}
"""


def test_merge_sums_amounts_and_keeps_the_weakest_readiness() -> None:
    a = TEXT.format(n=3, ready=1, created=200.0)
    b = TEXT.format(n=4, ready=0, created=100.0)
    merged = merge([a, b])
    lines = merged.splitlines()
    assert 'nv_inference_request_success{model="m",version="1"} 7.0' in lines
    assert 'seqserve_request_duration_seconds_bucket{le="+Inf",model="m",version="1"} 7.0' in lines
    assert 'seqserve_request_duration_seconds_sum{model="m",version="1"} 1.0' in lines
    assert 'seqserve_model_ready{model="m",version="1"} 0.0' in lines
    assert 'seqserve_request_duration_seconds_created{model="m",version="1"} 100.0' in lines
    assert "process_start_time_seconds 100.0" in lines
    assert lines.count("# TYPE nv_inference_request_success counter") == 1
    # Each family's HELP and TYPE come right before its samples.
    i = lines.index("# TYPE seqserve_model_ready gauge")
    assert lines[i + 1].startswith("seqserve_model_ready{")
    assert merge([a]) == merge([a, ""])  # a worker with nothing to say changes nothing


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_server_that_cannot_start_exits_1_with_the_reason(
    empty_repository: Path, workers: str
) -> None:
    """A TLS file that is not there: one server says so and exits; with workers, the
    supervisor stops instead of restarting a worker that never served."""
    missing = str(empty_repository / "missing.pem")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "serve",
            "--model-repository",
            str(empty_repository),
            "--workers",
            workers,
            "--http-port",
            "0",
            "--grpc-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--tls-cert",
            missing,
            "--tls-key",
            missing,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert "cannot read a TLS file" in out.stderr and "missing.pem" in out.stderr
    if workers == "2":
        assert "before it ever served" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_metrics_port_in_use_fails_at_once(empty_repository: Path, workers: str) -> None:
    with _taken_port() as port:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "seqserve",
                "serve",
                "--model-repository",
                str(empty_repository),
                "--workers",
                workers,
                "--http-port",
                "0",
                "--grpc-port",
                str(free_port()),
                "--metrics-port",
                str(port),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"cannot serve metrics on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_http_port_is_shared_by_the_workers_too(two_workers: ServerProcess) -> None:
    """Each HTTP request here opens its own connection, which the kernel gives to a worker;
    the statistics endpoint answers for the whole server, whichever worker takes it."""
    import json
    import urllib.request

    before = scrape(two_workers.metrics_url).get(SUCCESS, 0)
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": list(X.shape), "datatype": "FP32", "data": X.tolist()}]}
    ).encode()
    for _ in range(16):
        with urllib.request.urlopen(f"{two_workers.http_url}/v2/models/affine/infer", body) as r:
            assert json.loads(r.read())["outputs"][0]["data"] == (2 * X + 1).reshape(-1).tolist()
    per_worker = [m.get(SUCCESS, 0) for m in _worker_metrics(two_workers)]
    total = scrape(two_workers.metrics_url)[SUCCESS]
    assert total - before == 16 and all(n > 0 for n in per_worker), per_worker
    with urllib.request.urlopen(f"{two_workers.http_url}/v2/models/affine/stats") as r:
        stats = json.loads(r.read())["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == total


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_http_port_in_use_fails_at_once(empty_repository: Path, workers: str) -> None:
    with _taken_port() as port:
        out = subprocess.run(
            [
                *(sys.executable, "-m", "seqserve", "serve"),
                *("--model-repository", str(empty_repository), "--workers", workers),
                *("--http-port", str(port), "--grpc-port", str(free_port())),
                *("--metrics-port", str(free_port())),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr
