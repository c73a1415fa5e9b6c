"""Every row of the error -> status table, through a real in-process aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from core import errors
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.interceptors import INTERNAL_MESSAGE, STATUS, ExceptionToStatusInterceptor

CASES = [(cls, code) for cls, code in STATUS.items()] + [
    (ValueError, grpc.StatusCode.INTERNAL),  # not a ServingError: generic INTERNAL
]


class Raising(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        raise self.exc

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for _ in request_iterator:
            yield pb.ModelStreamInferResponse(error_message="first one fine")
            raise self.exc


async def _call(exc: BaseException) -> tuple[grpc.RpcError, grpc.RpcError, list]:
    server = grpc.aio.server(interceptors=[ExceptionToStatusInterceptor()])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Raising(exc), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as stream:
                async for reply in stub.ModelStreamInfer(iter([pb.ModelInferRequest()]), timeout=5):
                    got.append(reply)
            return unary.value, stream.value, got
    finally:
        await server.stop(None)


@pytest.mark.parametrize(("cls", "code"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_error_maps_to_status(cls: type[Exception], code: grpc.StatusCode) -> None:
    unary, stream, got = asyncio.run(_call(cls("field 'x': bad value")))
    for err in (unary, stream):
        assert err.code() is code
        if code is grpc.StatusCode.INTERNAL:
            assert err.details() == INTERNAL_MESSAGE  # never leak internals
        else:
            assert err.details() == "field 'x': bad value"
    assert len(got) == 1  # the stream delivered what came before the error


def test_failure_reasons() -> None:
    assert errors.QueueFull.reason is errors.FailureReason.REJECTED
    assert errors.DeadlineExceeded.reason is errors.FailureReason.REJECTED
    assert errors.InferenceError.reason is errors.FailureReason.BACKEND
    assert errors.InvalidInput.reason is errors.FailureReason.OTHER
