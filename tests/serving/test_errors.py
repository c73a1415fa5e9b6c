"""Every row of the status table, against a real server, and the server keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.serving.model_factory import AFFINE_CONFIG, add_model, affine
from tests.serving.v2 import call_error, held, outputs, request, scrape, stub

INVALID = grpc.StatusCode.INVALID_ARGUMENT
X = np.ones((1, 4), np.float32)


@pytest.fixture(scope="module")
def v2(standard_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    channel, s = stub(standard_server.target)
    with channel:
        yield s


def raw_request(
    model: str, name: str, datatype: str, shape: list[int], raw: bytes
) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model)
    msg.inputs.add(name=name, datatype=datatype, shape=shape)
    msg.raw_input_contents.append(raw)
    return msg


CASES = {
    "unknown model": (request("nope", x=X), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
    "unknown version": (request("affine", "7", x=X), grpc.StatusCode.NOT_FOUND, "no version 7"),
    "bad version": (
        request("affine", "../1", x=X),
        grpc.StatusCode.NOT_FOUND,
        "not a version number",
    ),
    "wrong input name": (request("affine", w=X), INVALID, "unexpected input 'w'"),
    "missing input": (pb.ModelInferRequest(model_name="affine"), INVALID, "missing input 'x'"),
    "extra input": (request("affine", x=X, extra=X), INVALID, "unexpected input 'extra'"),
    "wrong datatype": (
        request("affine", x=X.astype(np.float64)),
        INVALID,
        "datatype FP64, model 'affine' takes FP32",
    ),
    "wrong shape": (
        request("affine", x=np.ones((1, 5), np.float32)),
        INVALID,
        "shape [1, 5] does not match [-1, 4]",
    ),
    "raw length": (
        raw_request("affine", "x", "FP32", [1, 4], b"\0" * 15),
        INVALID,
        "raw data has 15 bytes, but shape [1, 4] of FP32 needs 16",
    ),
    "batch too big": (
        request("affine", x=np.ones((9, 4), np.float32)),
        INVALID,
        "batch size 9 exceeds max_batch_size 8",
    ),
    "NaN": (
        request("affine", x=np.array([[1, np.nan, 0, 0]], np.float32)),
        INVALID,
        "NaN or infinite",
    ),
    "invalid UTF-8": (
        request("echo", text=np.array([[b"\xff\xfe"]], dtype=object)),
        INVALID,
        "not valid UTF-8",
    ),
    "unknown datatype": (
        raw_request("affine", "x", "FP8", [1, 4], b"\0" * 4),
        INVALID,
        "datatype 'FP8' is not supported",
    ),
    "bad BYTES framing": (
        raw_request("echo", "text", "BYTES", [1, 1], b"\x09\0\0\0ab"),
        INVALID,
        "claims 9 bytes",
    ),
    "unknown output": (request("affine", outputs=("w",), x=X), INVALID, "unknown output 'w'"),
    "sequence parameter": (
        pb.ModelInferRequest(
            model_name="affine", parameters={"sequence_id": pb.InferParameter(int64_param=3)}
        ),
        INVALID,
        "parameter 'sequence_id'",
    ),
    "model not ready": (
        request("corrupt", x=X),
        grpc.StatusCode.UNAVAILABLE,
        "model 'corrupt' is not ready",
    ),
    "onnxruntime failure": (
        request("fragile", x=np.ones((1, 3), np.float32)),
        grpc.StatusCode.INTERNAL,
        "Internal server error",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_status_table(v2: pb_grpc.GRPCInferenceServiceStub, case: str) -> None:
    msg, code, words = CASES[case]
    err = call_error(v2.ModelInfer, msg, timeout=10)
    assert err.code() is code, err.details()
    assert words in err.details()
    # ... and the server keeps serving everyone else.
    got = outputs(v2.ModelInfer(request("affine", x=X), timeout=10))
    np.testing.assert_array_equal(got["y"], 2 * X + 1)


def test_failures_are_counted_by_reason(
    v2: pb_grpc.GRPCInferenceServiceStub, standard_server: ServerProcess
) -> None:
    call_error(v2.ModelInfer, request("fragile", x=np.ones((1, 3), np.float32)), timeout=10)
    call_error(v2.ModelInfer, request("affine", x=X.astype(np.float64)), timeout=10)
    samples = scrape(standard_server.metrics_url)
    fail = "nv_inference_request_failure"
    assert samples[(fail, "model=fragile,reason=BACKEND,version=1")] >= 1
    assert samples[(fail, "model=affine,reason=OTHER,version=1")] >= 1


async def _flood_slow(target: str, n: int, **kw: object) -> list[grpc.aio.AioRpcError | None]:
    x = np.zeros((1, 256, 256), np.float32)
    async with grpc.aio.insecure_channel(target) as ch:
        s = pb_grpc.GRPCInferenceServiceStub(ch)

        async def one() -> grpc.aio.AioRpcError | None:
            try:
                await s.ModelInfer(request("slow", x=x), timeout=30, **kw)
            except grpc.aio.AioRpcError as err:
                return err
            return None

        return await asyncio.gather(*(one() for _ in range(n)))


def test_queue_full_rejects_at_once(standard_server: ServerProcess) -> None:
    results = asyncio.run(_flood_slow(standard_server.target, 12))
    rejected = [e for e in results if e is not None]
    assert rejected, "a queue of 2 must reject some of 12 concurrent requests"
    for err in rejected:
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full (2 requests)" in err.details()
    assert any(e is None for e in results)
    samples = scrape(standard_server.metrics_url)
    assert samples[("nv_inference_request_failure", "model=slow,reason=REJECTED,version=1")] == len(
        rejected
    )


async def _timeout_while_queued(target: str, metrics_url: str) -> object:
    """A request that expires while it waits behind a busy one; False if the setup missed."""
    full = np.zeros((4, 256, 256), np.float32)  # a full batch: nothing merges with it
    async with grpc.aio.insecure_channel(target) as ch:
        s = pb_grpc.GRPCInferenceServiceStub(ch)
        busy = [asyncio.ensure_future(s.ModelInfer(request("slow", x=full), timeout=30))]
        try:
            if not await held(metrics_url, "slow", 1, busy):
                return False
            msg = request("slow", x=full[:1])
            msg.parameters["timeout"].int64_param = 1  # µs: expires before the busy call ends
            try:
                await s.ModelInfer(msg, timeout=30)
            except grpc.aio.AioRpcError as err:
                return err
            return None
        finally:
            await asyncio.gather(*busy, return_exceptions=True)


def test_request_timeout_while_queued(standard_server: ServerProcess) -> None:
    for _ in range(5):  # on a loaded machine the busy call may end before it is seen
        expired = asyncio.run(
            _timeout_while_queued(standard_server.target, standard_server.metrics_url)
        )
        if expired is not False:
            break
    assert expired is not None and expired.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timed out after" in expired.details()


async def _cancel_once(target: str, metrics_url: str) -> bool:
    """Cancel a request the server has received and queued; False if the setup missed it.

    Two full batches (4 rows each, so they cannot merge) keep `slow` busy for a few hundred
    ms; a third request queues behind them and is cancelled once the server counts it.
    On a loaded machine the busy pair can end before the third request is seen held; that
    attempt proves nothing, and the caller tries again.
    """
    full = np.zeros((4, 256, 256), np.float32)
    async with grpc.aio.insecure_channel(target) as ch:
        s = pb_grpc.GRPCInferenceServiceStub(ch)
        busy = [
            asyncio.ensure_future(s.ModelInfer(request("slow", x=full), timeout=30))
            for _ in range(2)
        ]
        try:
            if not await held(metrics_url, "slow", 2, busy):
                return False
            call = s.ModelInfer(request("slow", x=full[:1]), timeout=30)
            # Received and queued: the cancel now reaches the server, not only the wire.
            if not await held(metrics_url, "slow", 3, busy):
                await call
                return False
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            return True
        finally:
            await asyncio.gather(*busy, return_exceptions=True)


def test_cancelled_request_is_counted(standard_server: ServerProcess) -> None:
    key = ("nv_inference_request_failure", "model=slow,reason=CANCELED,version=1")
    before = scrape(standard_server.metrics_url).get(key, 0)
    seen = any(
        asyncio.run(_cancel_once(standard_server.target, standard_server.metrics_url))
        for _ in range(5)
    )
    assert seen, "five tries never had a request queued behind the busy pair"
    assert scrape(standard_server.metrics_url)[key] >= before + 1


def test_message_over_the_cap(tmp_path) -> None:  # noqa: ANN001
    repo = tmp_path / "model_repository"
    add_model(repo, "affine", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    server = ServerProcess(repo, "--max-message-bytes", "2000")
    try:
        server.wait_ready()
        channel, s = stub(server.target)
        with channel:
            big = raw_request("affine", "x", "FP32", [1, 4], b"\0" * 4000)
            err = call_error(s.ModelInfer, big, timeout=10)
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            outputs(s.ModelInfer(request("affine", x=X), timeout=10))
    finally:
        server.terminate()
