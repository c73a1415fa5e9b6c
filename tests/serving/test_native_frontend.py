"""The native front end (`--frontend native`): what its fast path takes, what it forwards, and
that both give the answers and the statistics the Python front end gives. The contract tests
(status table, queue full, timeouts, cancellation, TLS, drain, poll mode, tritonclient,
perf_analyzer) run against both front ends through the `standard_server` fixture and their
own parameters; this module covers what only the native one has."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as fgrpc
from tests.conftest import ServerProcess, native_built
from tests.serving.freeze import frozen
from tests.serving.model_factory import (
    AFFINE_CONFIG,
    add_forecaster,
    add_model,
    affine,
    standard_repository,
)
from tests.serving.test_hostile_input import forecast_window
from tests.serving.v2 import call_error, outputs, request, scrape, stub

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    native_built()
    repo = standard_repository(tmp_path_factory.mktemp("native") / "model_repository")
    srv = ServerProcess(repo, "--frontend", "native")
    try:
        srv.wait_ready()
        yield srv
    finally:
        assert srv.terminate() == 0, srv.output()


def _series(server: ServerProcess, name: str, model: str) -> float:
    return scrape(server.metrics_url).get((name, f"model={model},version=1"), 0.0)


def test_fast_path_runs_plain_requests_and_forwards_the_rest(native: ServerProcess) -> None:
    fast = "seqserve_native_requests_total"
    before = _series(native, fast, "affine_nobatch")
    ok_before = _series(native, "nv_inference_request_success", "affine_nobatch")
    channel, s = stub(native.target)
    with channel:
        for _ in range(3):
            reply = s.ModelInfer(request("affine_nobatch", rid="r", x=X), timeout=10)
            assert (reply.model_name, reply.model_version, reply.id) == ("affine_nobatch", "1", "r")
            np.testing.assert_allclose(outputs(reply)["y"], 2 * X + 1)
        assert _series(native, fast, "affine_nobatch") == before + 3
        # Typed contents, not raw: the Python server answers it, and it counts there.
        typed = pb.ModelInferRequest(model_name="affine_nobatch")
        typed.inputs.add(
            name="x",
            datatype="FP32",
            shape=[2, 4],
            contents=pb.InferTensorContents(fp32_contents=X.ravel().tolist()),
        )
        np.testing.assert_allclose(outputs(s.ModelInfer(typed, timeout=10))["y"], 2 * X + 1)
        # Malformed: forwarded too, and answered with the dataplane's status and message.
        bad = X.copy()
        bad[0, 0] = np.nan
        err = call_error(s.ModelInfer, request("affine_nobatch", x=bad), timeout=10)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'x': contains NaN" in err.details()
        err = call_error(s.ModelInfer, request("affine_nobatch", x=X[:, :3]), timeout=10)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        err = call_error(s.ModelInfer, request("nosuch", x=X), timeout=10)
        assert err.code() is grpc.StatusCode.NOT_FOUND
    assert _series(native, fast, "affine_nobatch") == before + 3
    # Both paths account in the same statistics.
    assert _series(native, "nv_inference_request_success", "affine_nobatch") == ok_before + 4


async def _concurrent(target: str, n: int) -> list[np.ndarray]:
    async with grpc.aio.insecure_channel(target) as ch:
        s = pb_grpc.GRPCInferenceServiceStub(ch)
        replies = await asyncio.gather(
            *(
                s.ModelInfer(request("affine", x=np.full((1, 4), i, np.float32)), timeout=10)
                for i in range(n)
            )
        )
    return [outputs(r)["y"] for r in replies]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(native: ServerProcess) -> None:
    count0 = _series(native, "nv_inference_count", "affine")
    exec0 = _series(native, "nv_inference_exec_count", "affine")
    fast0 = _series(native, "seqserve_native_requests_total", "affine")
    results = asyncio.run(_concurrent(native.target, 24))
    for i, y in enumerate(results):
        np.testing.assert_allclose(y, np.full((1, 4), 2 * i + 1, np.float32))
    inferred = _series(native, "nv_inference_count", "affine") - count0
    executions = _series(native, "nv_inference_exec_count", "affine") - exec0
    assert inferred == 24
    assert executions < 24, "24 concurrent requests with a 2 ms queue delay never batched"
    assert _series(native, "seqserve_native_requests_total", "affine") == fast0 + 24


def test_requested_outputs_and_batch_limits(native: ServerProcess) -> None:
    channel, s = stub(native.target)
    with channel:
        reply = s.ModelInfer(request("affine", outputs=("y",), x=X), timeout=10)
        assert [o.name for o in reply.outputs] == ["y"]
        err = call_error(
            s.ModelInfer, request("affine", x=np.zeros((9, 4), np.float32)), timeout=10
        )
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "exceeds max_batch_size 8" in err.details()


def test_streams_health_and_reflection_are_forwarded(native: ServerProcess) -> None:
    channel, s = stub(native.target)
    with channel:
        msgs = [
            request("affine", rid="a", x=X),
            request("nosuch", rid="b", x=X),
            request("affine", rid="c", x=X),
        ]
        replies = list(s.ModelStreamInfer(iter(msgs), timeout=10))
        assert [r.infer_response.id for r in replies] == ["a", "b", "c"]
        assert [bool(r.error_message) for r in replies] == [False, True, False]
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="affine"), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        meta = s.ServerMetadata(pb.ServerMetadataRequest(), timeout=5)
        assert meta.name == "seqserve"


def test_server_live_is_answered_while_the_event_loop_turns(native: ServerProcess) -> None:
    """The front end answers ServerLive itself, without the hop to the Python server, but only
    while that server's event loop beats: once the loop has been stuck for over a second, the
    probe goes to it and fails, as a liveness probe of a stuck server must."""
    channel, s = stub(native.target)
    with channel:
        assert s.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        with frozen([native.proc.pid]):  # the main thread: the event loop
            assert s.ServerLive(pb.ServerLiveRequest(), timeout=0.5).live  # by the C++ server
            time.sleep(1.5)
            err = call_error(s.ServerLive, pb.ServerLiveRequest(), timeout=1)
            assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert s.ServerLive(pb.ServerLiveRequest(), timeout=5).live  # the loop turns again


def test_same_answers_as_the_python_front_end(
    tiny_repository: Path, tiny_server: ServerProcess
) -> None:
    native_built()
    srv = ServerProcess(tiny_repository, "--frontend", "native")
    try:
        srv.wait_ready()
        got = {}
        for server in (tiny_server, srv):
            channel, s = stub(server.target)
            with channel:
                meta = s.ModelMetadata(pb.ModelMetadataRequest(name="forecaster_gru"))
                rng = np.random.default_rng(0)  # the same inputs for both
                feeds = {
                    t.name: rng.standard_normal((3, *t.shape[1:])).astype(np.float32)
                    for t in meta.inputs
                }
                got[server.target] = outputs(
                    s.ModelInfer(request("forecaster_gru", **feeds), timeout=30)
                )
                # Requested outputs come back in the order asked for, named twice or not.
                asked = ("quantiles", "forecast", "quantiles")
                reply = s.ModelInfer(request("forecaster_gru", outputs=asked, **feeds), timeout=30)
                assert [o.name for o in reply.outputs] == ["quantiles", "forecast"]
        python, native_ = got[tiny_server.target], got[srv.target]
        assert python.keys() == native_.keys()
        for name in python:
            np.testing.assert_array_equal(python[name], native_[name])
        assert _series(srv, "seqserve_native_requests_total", "forecaster_gru") == 2
    finally:
        assert srv.terminate() == 0, srv.output()


async def _mixed_load(target: str, clients: int, each: int) -> dict[str, int]:
    """Closed-loop clients mixing fast-path requests, forwarded ones (typed contents, bad
    values, unknown models, streams), short timeouts and cancellations."""
    seen = {"ok": 0, "invalid": 0, "not_found": 0, "cancelled": 0, "deadline": 0, "stream": 0}
    async with grpc.aio.insecure_channel(target) as ch:
        s = pb_grpc.GRPCInferenceServiceStub(ch)

        async def client(k: int) -> None:
            rng = np.random.default_rng(k)
            for i in range(each):
                x = rng.standard_normal((1, 4)).astype(np.float32)
                kind = (k + i) % 6
                if kind == 1:
                    x[0, 0] = np.inf
                msg = request("nosuch" if kind == 2 else "affine", x=x)
                if kind == 3:
                    msg = pb.ModelInferRequest(model_name="affine")
                    msg.inputs.add(
                        name="x",
                        datatype="FP32",
                        shape=[1, 4],
                        contents=pb.InferTensorContents(fp32_contents=x.ravel()),
                    )
                if kind == 5:
                    replies = [r async for r in s.ModelStreamInfer(iter([msg, msg]), timeout=10)]
                    assert len(replies) == 2 and not any(r.error_message for r in replies)
                    seen["stream"] += 1
                    continue
                call = s.ModelInfer(msg, timeout=0.0005 if kind == 4 and i % 2 else 10)
                if kind == 4 and not i % 2:
                    await asyncio.sleep(rng.uniform(0, 0.002))
                    call.cancel()
                try:
                    reply = await call
                except asyncio.CancelledError:
                    seen["cancelled"] += 1
                    continue
                except grpc.aio.AioRpcError as err:
                    key = {
                        grpc.StatusCode.INVALID_ARGUMENT: "invalid",
                        grpc.StatusCode.NOT_FOUND: "not_found",
                        grpc.StatusCode.DEADLINE_EXCEEDED: "deadline",
                    }[err.code()]
                    seen[key] += 1
                    continue
                np.testing.assert_allclose(outputs(reply)["y"], 2 * x + 1, rtol=1e-6)
                seen["ok"] += 1

        await asyncio.gather(*(client(k) for k in range(clients)))
    return seen


def test_mixed_load_with_errors_and_cancellations_loses_nothing(native: ServerProcess) -> None:
    """Every call ends with its answer or its own error; the server keeps serving, and counts
    every success the clients saw (and at most the calls they gave up on besides: a call
    cancelled, or past its deadline, as its answer is on the way was still a success there)."""
    before = _series(native, "nv_inference_request_success", "affine")
    seen = asyncio.run(_mixed_load(native.target, clients=8, each=60))
    assert seen["invalid"] == seen["not_found"] == 80 and seen["stream"] == 80, seen
    assert seen["ok"] >= 160, seen  # kinds 0 and 3 always succeed
    assert native.proc.poll() is None, native.output()
    after = _series(native, "nv_inference_request_success", "affine")
    answered = seen["ok"] + 2 * seen["stream"]
    assert answered <= after - before <= answered + seen["cancelled"] + seen["deadline"], seen
    channel, s = stub(native.target)
    with channel:
        np.testing.assert_allclose(
            outputs(s.ModelInfer(request("affine", x=X), timeout=10))["y"], 2 * X + 1
        )


def test_cancelled_streams_end_upstream_too(native: ServerProcess) -> None:
    """A forwarded server stream (health Watch) cancelled by its client ends on both sides,
    again and again, and the server goes on."""
    channel, s = stub(native.target)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(20):
            watch = health.Watch(health_pb2.HealthCheckRequest(service="affine"), timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
        assert s.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert native.proc.poll() is None


def test_a_version_reloaded_in_place_stays_on_the_fast_path(tmp_path: Path) -> None:
    """Poll mode reloads version 1 when its file changes: the new instance of the version
    takes over the fast path, and the old one's queue closes with it, not the route."""
    native_built()
    repo = tmp_path / "model_repository"
    model_dir = add_model(repo, "a", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    srv = ServerProcess(
        repo,
        "--frontend",
        "native",
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.3",
    )
    try:
        srv.wait_ready()
        channel, s = stub(srv.target)
        with channel:
            s.ModelInfer(request("a", x=X), timeout=10)
            affine(tmp_path / "new.onnx")  # the same model, a new file: a reload
            os.replace(tmp_path / "new.onnx", model_dir / "1" / "model.onnx")
            deadline = time.monotonic() + 30
            while srv.output().count("model 'a' version 1 ready") < 2:
                assert time.monotonic() < deadline, srv.output()
                time.sleep(0.1)
            time.sleep(0.5)  # the replaced instance is retired after the swap
            for _ in range(3):
                np.testing.assert_allclose(
                    outputs(s.ModelInfer(request("a", x=X), timeout=10))["y"], 2 * X + 1
                )
        assert _series(srv, "seqserve_native_requests_total", "a") == 3  # the new instance's
    finally:
        assert srv.terminate() == 0, srv.output()


async def _typed_load(target: str, clients: int, each: int) -> Counter:
    """Typed Forecast calls, answered in process by the native front end: a third cancelled at
    once, a third with a 1 ms deadline, a third plain."""
    request = fpb.ForecastRequest(model_name="fc", windows=[forecast_window()])
    seen: Counter = Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        api = fgrpc.ForecasterStub(channel)

        async def client(k: int) -> None:
            for i in range(each):
                kind = (k + i) % 3
                call = api.Forecast(request, timeout=0.001 if kind == 1 else 10)
                if kind == 0:
                    call.cancel()
                try:
                    reply = await call
                except asyncio.CancelledError:
                    seen["cancelled"] += 1
                    continue
                except grpc.aio.AioRpcError as err:
                    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED, err
                    seen["deadline"] += 1
                    continue
                assert len(reply.forecasts[0].targets[0].point) == 2
                seen["ok"] += 1

        await asyncio.gather(*(client(k) for k in range(clients)))
    return seen


def test_typed_forecast_is_answered_in_process_and_loses_nothing(tmp_path: Path) -> None:
    """The typed Forecaster API skips the hop to the Python server behind the front end: on
    the fast path when the model takes the request as it is (counted in
    seqserve_native_requests_total), else in process (seqserve_native_in_process_calls_total).
    Under cancellations and
    deadlines every call ends with its answer or its own error, and a SIGTERM with typed
    calls in flight lets each finish, then exits 0."""
    native_built()
    repo = tmp_path / "model_repository"
    add_forecaster(repo)
    srv = ServerProcess(repo, "--frontend", "native")
    try:
        srv.wait_ready()
        seen = asyncio.run(_typed_load(srv.target, clients=8, each=30))
        assert seen["ok"] >= 80 and sum(seen.values()) == 240, seen

        metrics = scrape(srv.metrics_url)
        fast = metrics[("seqserve_native_requests_total", "model=fc,version=1")]
        local = metrics[
            (
                "seqserve_native_in_process_calls_total",
                "method=/seqserve.forecast.v1.Forecaster/Forecast",
            )
        ]
        # Each call answered went through one of the two (one cancelled or past its deadline
        # at once may not have got there); these, as the model takes them, on the fast path.
        assert fast > 0 and seen["ok"] <= fast + local <= 240, (fast, local, seen)

        async def drained() -> list:
            async with grpc.aio.insecure_channel(srv.target) as channel:
                api = fgrpc.ForecasterStub(channel)
                request = fpb.ForecastRequest(model_name="fc", windows=[forecast_window()] * 64)
                calls = [api.Forecast(request, timeout=30) for _ in range(32)]
                await asyncio.sleep(0.05)
                srv.proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*calls, return_exceptions=True)

        replies = asyncio.run(drained())
        failed = [r for r in replies if isinstance(r, BaseException)]
        assert not failed, failed[:3]
        assert all(len(r.forecasts) == 64 for r in replies)
        assert srv.proc.wait(30) == 0, srv.output()
    finally:
        srv.terminate()


def test_an_in_process_call_cancelled_stops_its_work(tmp_path: Path) -> None:
    """A typed call answered in process that its client cancels, or that the grace period
    ends, stops where it is, as a forwarded call's handler is cancelled by grpc.aio: counted
    CANCELED at once, and SIGTERM's drain does not wait for the work it was doing."""
    native_built()
    repo = tmp_path / "model_repository"
    add_forecaster(repo, matmuls=160)  # ~60 ms per window: 100 windows are ~6 s of work
    srv = ServerProcess(repo, "--frontend", "native", "--grace-period-secs", "1")
    request = fpb.ForecastRequest(model_name="fc", windows=[forecast_window()] * 100)
    cancelled = ("nv_inference_request_failure", "model=fc,reason=CANCELED,version=1")

    async def started(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryCall:
        call = fgrpc.ForecasterStub(channel).Forecast(request, timeout=60)
        deadline = time.monotonic() + 10
        while (
            scrape(srv.metrics_url).get(
                ("nv_inference_pending_request_count", "model=fc,version=1"), 0
            )
            < 1
        ):
            assert time.monotonic() < deadline, "the call never reached the model"
            await asyncio.sleep(0.02)
        return call

    async def cancel() -> float:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            call = await started(channel)
            call.cancel()
            t0 = time.monotonic()
            while scrape(srv.metrics_url).get(cancelled, 0) < 1:
                assert time.monotonic() - t0 < 5, "the cancelled call was not counted CANCELED"
                await asyncio.sleep(0.02)
            return time.monotonic() - t0

    async def sigterm() -> tuple[object, float]:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            call = await started(channel)
            srv.proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            try:
                outcome: object = await call
            except grpc.aio.AioRpcError as err:
                outcome = err.code()
            return outcome, time.monotonic() - t0

    try:
        srv.wait_ready()
        assert asyncio.run(cancel()) < 2
        outcome, took = asyncio.run(sigterm())
        assert outcome in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE) and took < 4, (
            outcome,
            took,
        )
        t0 = time.monotonic()
        srv.proc.wait(30)
        assert time.monotonic() - t0 < 4, srv.output()
    finally:
        srv.terminate()
