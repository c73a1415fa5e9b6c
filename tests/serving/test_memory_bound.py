"""The default limits bound the server's memory under a flood of maximal messages
(docs/serving.md, "Memory, worst case"). The native front end keeps the request bytes it holds
within `--max-request-bytes-in-flight`: messages wait to be served, and calls whose message is
still arriving when the budget is spent are refused with RESOURCE_EXHAUSTED. Every call gets
an answer, and calls of ordinary size are never refused."""

from __future__ import annotations

import http.client
import json
import queue
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest

from bench.procfs import memory_bytes
from protos.inference import grpc_service_pb2 as pb
from serving.settings import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES_IN_FLIGHT, Settings
from tests.conftest import ServerProcess, native_built
from tests.serving.h2_client import RawConnection, grpc_message
from tests.serving.model_factory import ECHO_CONFIG, SLOW_CONFIG, add_model, echo_bytes, slow
from tests.serving.v2 import scrape

pytestmark = pytest.mark.slow  # floods of maximal messages

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MIB = 2**20
# What may arrive before the front end sheds calls (10 ms and a 5 ms tick), the bytes of the
# shed calls still in transit, and the allocator's slack (counted together as 384 MiB; the
# slack reached ~440 MiB before the server held glibc's mmap threshold, serving/allocator.py),
# and the error of the budgets' accounts that explain growth (a message at the cap): the
# documented bound's second term.
REACTION = 384 * MIB + MAX_MESSAGE_BYTES
CALLS = 32  # each as large as the cap allows: unbudgeted, they held 4.5 GiB
CONNECTIONS = 4
HTTP_BODIES, HTTP_BODY = 16, 48 * MIB  # with their copies, 5 GiB


def _liveness_period_s() -> float:
    """The liveness probe's periodSeconds in deploy/k8s/seqserve.yaml (deploy/kserve's
    runtime gives its probe the same). A probe answered within it was answered before the
    kubelet's next: the server is never stuck for a whole period, while a restart takes six
    probes in a row slower than the probe's timeoutSeconds (5 s)."""
    import yaml

    manifest = Path(__file__).parents[2] / "deploy" / "k8s" / "seqserve.yaml"
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == "Deployment":
            [container] = doc["spec"]["template"]["spec"]["containers"]
            return float(container["livenessProbe"]["periodSeconds"])
    raise AssertionError(f"{manifest}: no Deployment")


def _rss(pid: int, field: str = "VmRSS") -> int:
    value = memory_bytes(pid, field)
    assert value is not None, f"no {field} for {pid}"
    return value


def _maximal_request() -> bytes:
    """A serialized ModelInferRequest just under the message cap, for a model the fast path
    does not serve: forwarded to the Python server, so every copy is made (the costliest
    route)."""
    msg = pb.ModelInferRequest(model_name="nobody")
    msg.inputs.add(name="x", datatype="UINT8", shape=[MAX_MESSAGE_BYTES - 4096])
    msg.raw_input_contents.append(bytes(MAX_MESSAGE_BYTES - 4096))
    return msg.SerializeToString()


def test_the_documented_worst_case_is_under_1_gib() -> None:
    assert Settings(model_repository=Path(".")).max_request_bytes_in_flight == (
        MAX_REQUEST_BYTES_IN_FLIGHT
    )
    assert MAX_REQUEST_BYTES_IN_FLIGHT + REACTION < 2**30


class Outcome(NamedTuple):
    """How a call ended: `answered` (the model lookup's NOT_FOUND reached it) and its status."""

    answered: bool
    code: grpc.StatusCode
    details: str


def _unary(call: grpc.Future) -> Outcome:
    err = call.exception()
    assert err is not None  # a model named "nobody" is never served
    return Outcome(err.code() is grpc.StatusCode.NOT_FOUND, err.code(), err.details())


def _streamed(channel: grpc.Channel, payload: bytes) -> Outcome:
    """One ModelStreamInfer stream carrying `payload` (a stream answers a request it cannot
    serve with an error message, not a status), read to its end: a stream answered may still
    be refused after, while its next read waits for the client's end of stream."""
    answered = False
    try:
        for reply in channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )(iter([payload]), timeout=120):
            answered = answered or "unknown model" in reply.error_message
    except grpc.RpcError as err:
        return Outcome(answered, err.code(), err.details())
    return Outcome(answered, grpc.StatusCode.OK, "")


def _http_body(port: int) -> int:
    """One HTTP request of a 48 MiB BYTES element to the echo model (served with 6 copies):
    its status, or 0 if the server closed the connection while it was sent (refused)."""
    element = struct.pack("<I", HTTP_BODY) + bytes(HTTP_BODY)
    header = json.dumps(
        {
            "inputs": [
                {"name": "text", "shape": [1, 1], "datatype": "BYTES"}
                | {"parameters": {"binary_data_size": len(element)}}
            ],
            "outputs": [{"name": "echo", "parameters": {"binary_data": True}}],
        }
    ).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(
            "POST",
            "/v2/models/echo/infer",
            header + element,
            {"Inference-Header-Content-Length": str(len(header))},
        )
        reply = conn.getresponse()
        reply.read()
        return reply.status
    except (ConnectionError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


@pytest.mark.parametrize("api", ["unary", "stream", "unary and http"])
@pytest.mark.parametrize("frontend", ["native", "python"])
def test_a_flood_of_maximal_messages_stays_within_the_bound(
    tmp_path: Path, frontend: str, api: str
) -> None:
    """Over ModelInfer calls, over ModelStreamInfer streams (whose reads the budget takes
    alike: an idle stream holds nothing), and over ModelInfer calls and HTTP bodies at once
    (the HTTP port takes from the same budget: the bound is one budget's, not two), on both
    front ends: the native one sheds calls whose message is still arriving, the Python one
    reads a message only when the budget has room for it (serving/budget.py)."""
    if frontend == "native":
        native_built()
    repo = tmp_path / "model_repository"
    add_model(repo, "slow", SLOW_CONFIG.format(queue=64), slow)
    add_model(repo, "echo", ECHO_CONFIG, echo_bytes)
    server = ServerProcess(repo, "--frontend", frontend)
    try:
        server.wait_ready()
        pid = server.proc.pid
        time.sleep(0.5)
        base = _rss(pid)
        payload = _maximal_request()
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss(pid))
                time.sleep(0.01)

        live_s: list[float] = []  # ServerLive's latency throughout, on its own connection
        missed: list[str] = []  # probes not answered within the deadline
        deadline = _liveness_period_s()

        def probe() -> None:
            with grpc.insecure_channel(server.target, options=[("grpc.channel_id", 99)]) as ch:
                live = ch.unary_unary(
                    "/inference.GRPCInferenceService/ServerLive",
                    response_deserializer=pb.ServerLiveResponse.FromString,
                )
                while not stop.is_set():
                    start = time.monotonic()
                    try:
                        answered = live(
                            pb.ServerLiveRequest().SerializeToString(), timeout=deadline
                        )
                    except grpc.RpcError as err:
                        missed.append(f"{err.code().name} after {time.monotonic() - start:.1f} s")
                        continue
                    if not answered.live:
                        missed.append("answered not live")
                    live_s.append(time.monotonic() - start)
                    time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        channels = [
            grpc.insecure_channel(
                server.target,
                options=[("grpc.max_send_message_length", -1), ("grpc.channel_id", i)],
            )
            for i in range(CONNECTIONS)
        ]
        try:
            if api == "unary":
                calls = [
                    channels[i % CONNECTIONS].unary_unary(MODEL_INFER).future(payload, timeout=120)
                    for i in range(CALLS)
                ]
                outcomes = [_unary(c) for c in calls]
            elif api == "unary and http":
                with ThreadPoolExecutor(HTTP_BODIES) as pool:
                    bodies = [pool.submit(_http_body, server.http_port) for _ in range(HTTP_BODIES)]
                    calls = [
                        channels[i % CONNECTIONS]
                        .unary_unary(MODEL_INFER)
                        .future(payload, timeout=120)
                        for i in range(CALLS)
                    ]
                    outcomes = [_unary(c) for c in calls]
                    statuses = Counter(b.result() for b in bodies)
                assert set(statuses) <= {200, 429, 0} and statuses[200] < HTTP_BODIES, statuses
            else:
                with ThreadPoolExecutor(CALLS) as pool:
                    outcomes = list(
                        pool.map(
                            lambda i: _streamed(channels[i % CONNECTIONS], payload), range(CALLS)
                        )
                    )
        finally:
            stop.set()
            sampler.join()
            prober.join()
            for ch in channels:
                ch.close()
        # Probes answered throughout, each within the liveness probe's period. How fast is a
        # benchmark's question, not this test's: on these 2-core VMs, beside the second test
        # worker and the 32 client threads, one probe has taken 2.5 s on the native front end
        # and 5.3 s on the Python one (docs/serving.md); alone, 172 and 417 ms.
        assert not missed, f"ServerLive missed its {deadline:.0f} s deadline: {missed[:3]}"
        assert len(live_s) >= 3, f"ServerLive answered only {len(live_s)} times"
        # Nothing lost: every call answered by the model lookup its request reached, or
        # refused while it arrived, with a message naming the flag.
        codes = Counter(o.code for o in outcomes)
        lost = [
            o
            for o in outcomes
            if not o.answered and o.code is not grpc.StatusCode.RESOURCE_EXHAUSTED
        ]
        assert not lost, lost[:3]
        if frontend == "native":  # the Python front end makes messages wait to be read
            assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] > 0, codes
        assert set(codes) <= {
            grpc.StatusCode.OK,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        }, codes
        assert all(
            "--max-request-bytes-in-flight" in o.details
            for o in outcomes
            if o.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        growth = max(peak[0], _rss(pid, "VmHWM")) - base
        bound = MAX_REQUEST_BYTES_IN_FLIGHT + REACTION
        print(
            f"{frontend} {api}: peak RSS grew {growth / MIB:.0f} MiB; {dict(codes)}; "
            f"ServerLive up to {max(live_s) * 1e3:.0f} ms"
        )
        assert growth < bound, (
            f"server memory grew {growth / MIB:.0f} MiB under the flood; "
            f"the bound is {bound / MIB:.0f} MiB"
        )
        metrics = scrape(server.metrics_url)
        assert (
            metrics[("seqserve_requests_shed_total", "")]
            == (codes[grpc.StatusCode.RESOURCE_EXHAUSTED])
        )
        assert metrics[("seqserve_request_bytes_in_flight", "")] == 0  # all given back
        # And it goes on serving.
        with grpc.insecure_channel(server.target) as ch:
            small = pb.ModelInferRequest(model_name="nobody").SerializeToString()
            try:
                ch.unary_unary(MODEL_INFER)(small, timeout=10)
            except grpc.RpcError as err:
                assert err.code() is grpc.StatusCode.NOT_FOUND
    finally:
        assert server.terminate() == 0


def test_a_failed_request_is_freed_when_its_call_ends(tmp_path: Path) -> None:
    """grpc.aio's abort kept each failed request in a reference cycle until Python's cyclic
    garbage collector ran: twelve failed requests at the cap, one after another, raised the
    Python front end's RSS by ~700 MiB. Now each is freed as its call ends."""
    repo = tmp_path / "model_repository"
    add_model(repo, "slow", SLOW_CONFIG.format(queue=64), slow)
    server = ServerProcess(repo, "--frontend", "python")
    try:
        server.wait_ready()
        payload = _maximal_request()
        with grpc.insecure_channel(
            server.target, options=[("grpc.max_send_message_length", -1)]
        ) as ch:
            infer = ch.unary_unary(MODEL_INFER)
            for i in range(12):
                try:
                    infer(payload, timeout=60)
                except grpc.RpcError as err:
                    assert err.code() is grpc.StatusCode.NOT_FOUND
                if i == 1:  # the allocator's working set is there now
                    base = _rss(server.proc.pid)
        # On a loaded machine the last calls' buffers may take a moment to be given back; a
        # request kept alive by a reference cycle is never given back while the server idles
        # (nothing runs the cyclic collector), so a few seconds' wait cannot hide the bug.
        deadline = time.monotonic() + 5
        while (growth := _rss(server.proc.pid) - base) >= 128 * MIB:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert growth < 128 * MIB, f"RSS grew {growth / MIB:.0f} MiB over 10 failed requests"
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize("frontend", ["native", "python"])
def test_idle_streams_are_not_taken_for_arriving_messages(tmp_path: Path, frontend: str) -> None:
    """A ModelStreamInfer client (tritonclient's `start_stream`, perf_analyzer --streaming)
    opens its stream and sends when it chooses. Such a stream waiting for its client holds no
    bytes: the budget's watch once counted each as a message at the cap still arriving, and
    three idle streams were enough to have the newest refused. Now it counts what the process
    has grown by."""
    if frontend == "native":
        native_built()
    repo = tmp_path / "model_repository"
    add_model(repo, "slow", SLOW_CONFIG.format(queue=64), slow)
    server = ServerProcess(repo, "--frontend", frontend)
    streams = 12  # counted as messages at the cap, 12 x 128 MiB: 3 times the budget
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.target) as ch:
            stream_infer = ch.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                response_deserializer=(pb.ModelStreamInferResponse.FromString),
            )
            outboxes = [queue.Queue() for _ in range(streams)]
            answers: list[list[str]] = [[] for _ in range(streams)]

            def talk(k: int) -> None:
                try:
                    for reply in stream_infer(iter(outboxes[k].get, None), timeout=60):
                        answers[k].append(reply.error_message or "ok")
                except grpc.RpcError as err:
                    answers[k].append(f"{err.code().name}: {err.details()}")

            threads = [threading.Thread(target=talk, args=(k,)) for k in range(streams)]
            for t in threads:
                t.start()
            time.sleep(0.5)  # 25 times the watch's grace, every stream open and idle
            request = pb.ModelInferRequest(model_name="nobody").SerializeToString()
            for outbox in outboxes:
                outbox.put(request)
            time.sleep(0.5)  # idle again, between messages
            for outbox in outboxes:
                outbox.put(request)
                outbox.put(None)
            for t in threads:
                t.join(timeout=30)
        assert all(
            len(a) == 2 and all("unknown model 'nobody'" in m for m in a) for a in answers
        ), answers
        assert scrape(server.metrics_url)[("seqserve_requests_shed_total", "")] == 0
    finally:
        assert server.terminate() == 0


def _statuses(conn: RawConnection, streams: list[int], timeout: float) -> dict[int, str]:
    """The grpc-status each stream ended with (trailers, or a trailers-only response)."""
    got: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(streams) and time.monotonic() < deadline:
        for event in conn.drain():
            headers = getattr(event, "headers", None)
            if headers and getattr(event, "stream_id", None) in streams:
                status = dict(headers).get("grpc-status")
                if status is not None:
                    got[event.stream_id] = status
        time.sleep(0.01)
    return got


@pytest.mark.parametrize("frontend", ["native", "python"])
def test_late_messages_are_not_shed_while_memory_does_not_grow(
    tmp_path: Path, frontend: str
) -> None:
    """Calls whose message is late but small, or not sent yet, hold nothing: on two saturated
    cores a gRPC thread may not read a small message for 20 ms, and before, three such calls
    at once were shed as if each were arriving at the cap. Now a late call counts what the
    process has grown by, beyond what the budgets took, since it started (the flood test above
    checks that a real flood still is shed)."""
    if frontend == "native":
        native_built()
    repo = tmp_path / "model_repository"
    add_model(repo, "slow", SLOW_CONFIG.format(queue=64), slow)
    server = ServerProcess(repo, "--frontend", frontend)
    try:
        server.wait_ready()
        host, port = server.target.rsplit(":", 1)
        conn = RawConnection(host, int(port))
        try:
            conn.drain()
            streams = [conn.open_stream(MODEL_INFER) for _ in range(6)]  # 6 x 128 MiB late
            conn.flush()
            time.sleep(0.5)  # 25 times the grace: each call owes its message all along
            early = _statuses(conn, streams, timeout=0.1)
            assert early == {}, f"calls ended before their message came: {early}"
            body = pb.ModelInferRequest(model_name="nobody").SerializeToString()
            for stream_id in streams:
                conn.conn.send_data(stream_id, grpc_message(body), end_stream=True)
            conn.flush()
            codes = _statuses(conn, streams, timeout=10)
        finally:
            conn.close()
        assert codes == {s: str(grpc.StatusCode.NOT_FOUND.value[0]) for s in streams}, codes
        assert scrape(server.metrics_url)[("seqserve_requests_shed_total", "")] == 0
    finally:
        assert server.terminate() == 0
