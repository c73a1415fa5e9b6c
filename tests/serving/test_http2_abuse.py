"""The public port survives HTTP/2 abuse from a raw client (the `h2` package): a Rapid Reset
flood (HEADERS then RST_STREAM, over and over: CVE-2023-44487), hundreds of idle connections,
and readers that never read their responses. Throughout, ServerLive answers within 1 s and the
server's memory grows less than 200 MiB; a well-behaved client's latency is back to normal
within 5 s of the attack's end. Each attack runs a few seconds on loopback.

The native front end's HTTP/2 stack (Debian's gRPC 1.51) does not survive Rapid Reset: 76,000
reset streams in 3 s raised its RSS by 1 GiB and left it unable to answer. So `auto` serves
with it only on a loopback address, and the flood runs against the Python front end, which
every other address gets (docs/serving.md, "HTTP/2 abuse"). The other attacks run on both."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pytest

from bench.procfs import memory_bytes
from protos.inference import grpc_service_pb2 as pb
from serving.settings import Frontend, Settings
from tests.conftest import ServerProcess, native_built
from tests.serving.h2_client import RawConnection, rapid_reset
from tests.serving.model_factory import (
    AFFINE_CONFIG,
    FAN_OUT_CONFIG,
    add_model,
    affine,
    fan_out,
)
from tests.serving.v2 import request, stub

pytestmark = pytest.mark.slow  # floods and hundreds of connections

MIB = 2**20
MEMORY = 200 * MIB
ATTACK_S = 2.0
INFER = "/inference.GRPCInferenceService/ModelInfer"
T = TypeVar("T")


def _rss(pid: int) -> int:
    value = memory_bytes(pid)
    assert value is not None, f"the server ({pid}) is gone"
    return value


@pytest.fixture(scope="module", params=["python", "native"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    if request.param == "native":
        native_built()
    repo = tmp_path_factory.mktemp("h2") / "model_repository"
    add_model(repo, "affine", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    add_model(repo, "fan_out", FAN_OUT_CONFIG, fan_out)
    srv = ServerProcess(repo, "--frontend", request.param)
    try:
        srv.wait_ready()
        yield srv
    finally:
        assert srv.terminate() == 0


class Watch:
    """While an attack runs: ServerLive every 100 ms (1 s deadline) on a connection of its
    own, and the server's peak RSS."""

    def __init__(self, server: ServerProcess) -> None:
        self.pid = server.proc.pid
        self.base = _rss(self.pid)
        self.peak = self.base
        self.live: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._channel, self._stub = stub(server.target)
        self._stub.ServerLive(pb.ServerLiveRequest(), timeout=5)  # connected before the attack
        self._threads = [
            threading.Thread(target=self._probe, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _probe(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self._stub.ServerLive(pb.ServerLiveRequest(), timeout=1.0)
                self.live.append(time.perf_counter() - t0)
            except grpc.RpcError as err:
                self.failures.append(f"{err.code().name}: {err.details()}")
            self._stop.wait(0.1)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._channel.close()

    def check(self) -> None:
        assert not self.failures, f"ServerLive failed during the attack: {self.failures[:3]}"
        assert len(self.live) >= 10 and max(self.live) < 1.0, (len(self.live), max(self.live))
        growth = self.peak - self.base
        assert growth < MEMORY, f"the server's RSS grew {growth / MIB:.0f} MiB"


def _p50_ms(target: str, calls: int = 20) -> float:
    """A well-behaved client's median latency: affine calls one after another."""
    x = np.ones((1, 4), np.float32)
    channel, v2 = stub(target)
    with channel:
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            v2.ModelInfer(request("affine", x=x), timeout=5)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _under_attack(server: ServerProcess, attack: Callable[[float], T]) -> T:
    """Run `attack` until its deadline while watching the server; then the good client's
    latency must be back within 5 s."""
    baseline = _p50_ms(server.target)
    watch = Watch(server)
    try:
        outcome = attack(time.monotonic() + ATTACK_S)
    finally:
        watch.stop()
    watch.check()
    normal = max(3 * baseline, baseline + 5)
    deadline = time.monotonic() + 5
    while (p50 := _p50_ms(server.target)) > normal:
        assert time.monotonic() < deadline, (
            f"good client's p50 {p50:.1f} ms > {normal:.1f} ms 5 s after the attack "
            f"(baseline {baseline:.1f} ms)"
        )
    return outcome


def _host_port(server: ServerProcess) -> tuple[str, int]:
    host, port = server.target.rsplit(":", 1)
    return host, int(port)


# ModelInfer stays in the native front end; the typed API is forwarded to the Python server,
# so each stream the attacker opens costs a call upstream as well.
FLOODED = [INFER, "/seqserve.forecast.v1.Forecaster/Forecast"]


@pytest.mark.parametrize("path", FLOODED, ids=["v2", "typed"])
def test_rapid_reset_flood(
    server: ServerProcess, path: str, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.params["server"] == "native":
        pytest.skip("not on the native front end: `auto` keeps it off addresses others reach")
    host, port = _host_port(server)

    def flood(deadline: float) -> tuple[int, int]:
        streams = connections = 0
        conn = None
        try:
            while time.monotonic() < deadline:
                if conn is None or conn.closed:  # the server may end an abusive connection
                    if conn is not None:
                        conn.close()
                    conn = RawConnection(host, port)
                    conn.drain()  # SETTINGS exchanged
                    connections += 1
                streams += rapid_reset(conn, path, 2000)
        finally:
            if conn is not None:
                conn.close()
        return streams, connections

    streams, connections = _under_attack(server, flood)
    print(
        f"rapid reset on {path}: {streams / ATTACK_S:,.0f} streams/s over {connections} "
        f"connection(s)"
    )
    assert streams > 10_000  # the flood did run


def test_hundreds_of_idle_connections(server: ServerProcess) -> None:
    host, port = _host_port(server)

    def idle(deadline: float) -> int:
        conns = []
        try:
            while len(conns) < 500 and time.monotonic() < deadline:
                conns.append(RawConnection(host, port))
            for c in conns:
                c.drain()  # the server's SETTINGS acknowledged; then nothing more
            time.sleep(max(0.0, deadline - time.monotonic()))
            return len(conns)
        finally:
            for c in conns:
                c.close()

    assert _under_attack(server, idle) == 500


def test_readers_that_never_read(server: ServerProcess) -> None:
    """Connections whose HTTP/2 window is 0 send as many calls as the server takes, each for a
    256 KiB response that can never be sent; the server holds them until the client goes."""
    host, port = _host_port(server)
    body = request("fan_out", x=np.ones((1, 1), np.float32)).SerializeToString()

    def stall(deadline: float) -> int:
        conns = [RawConnection(host, port, window=0) for _ in range(2)]
        try:
            for c in conns:
                c.drain()  # the server's SETTINGS: its stream limit
                for _ in range(64):
                    c.open_stream(INFER, body)
                c.flush()
            time.sleep(max(0.0, deadline - time.monotonic()))
            return sum(len(c.conn.streams) for c in conns)
        finally:
            for c in conns:
                c.close()

    assert _under_attack(server, stall) > 0


@pytest.mark.parametrize(
    ("address", "frontend", "native"),
    [
        ("127.0.0.1", Frontend.AUTO, True),
        ("localhost", Frontend.AUTO, True),
        ("[::1]", Frontend.AUTO, True),
        ("0.0.0.0", Frontend.AUTO, False),
        ("10.1.2.3", Frontend.AUTO, False),
        ("[::]", Frontend.AUTO, False),
        ("seqserve.internal", Frontend.AUTO, False),
        ("0.0.0.0", Frontend.NATIVE, True),  # asked for: served, with a warning in the log
        ("127.0.0.1", Frontend.PYTHON, False),
    ],
)
def test_auto_keeps_the_native_front_end_to_loopback(
    address: str, frontend: Frontend, native: bool
) -> None:
    native_built()
    from serving.native.frontend import wanted

    settings = Settings(model_repository=Path("."), grpc_address=address, frontend=frontend)
    assert wanted(settings) is native
