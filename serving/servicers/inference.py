"""KServe V2 / Triton `inference.GRPCInferenceService` adapter over the dataplane."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.dataplane import DataPlane
from serving.errors import Unsupported

SERVICE_NAME = "inference.GRPCInferenceService"

# RPCs of the protocol that seqserve does not implement. They answer UNIMPLEMENTED with a clear
# message and their extensions are not advertised in ServerMetadata.
UNSUPPORTED_RPCS = {
    "SystemSharedMemoryStatus": "system shared memory",
    "SystemSharedMemoryRegister": "system shared memory",
    "SystemSharedMemoryUnregister": "system shared memory",
    "CudaSharedMemoryStatus": "CUDA shared memory",
    "CudaSharedMemoryRegister": "CUDA shared memory",
    "CudaSharedMemoryUnregister": "CUDA shared memory",
    "TraceSetting": "tracing",
    "LogSettings": "log settings",
}


def _unsupported(rpc: str, feature: str) -> Any:
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> NoReturn:
        raise Unsupported(f"{rpc}: seqserve does not support {feature}")

    handler.__name__ = rpc
    return handler


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dp.server_live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dp.server_ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        meta = self._dp.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta.name, version=meta.version, extensions=meta.extensions
        )


for _rpc, _feature in UNSUPPORTED_RPCS.items():
    setattr(InferenceServicer, _rpc, _unsupported(_rpc, _feature))
