"""KServe V2 / Triton `inference.GRPCInferenceService` adapter over the dataplane."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import numpy as np

from core.errors import ServingError, Unsupported
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.dataplane import DataPlane
from serving.interceptors import status_for
from serving.models.base import ServedModel
from serving.peers import Peers
from serving.servicers import repository
from serving.servicers.codec import decode_request, encode_response

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


def _tensor_metadata(specs: dict, batching: bool) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=s.name, datatype=s.datatype, shape=s.shape(batching)
        )
        for s in specs.values()
    ]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, peers: Peers | None = None) -> None:
        self._dp = dataplane
        self._peers = peers  # sibling workers under --workers N, else None

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

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self._dp.model(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=self._dp.model_versions(model.name),
            platform=model.config.platform or model.config.backend,
            inputs=_tensor_metadata(model.inputs, model.batching),
            outputs=_tensor_metadata(model.outputs, model.batching),
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._dp.model_config(request.name, request.version))

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        start = time.perf_counter_ns()
        remaining = context.time_remaining()

        async def call(model: ServedModel) -> dict[str, np.ndarray]:
            infer_request = decode_request(request, model)  # counted, as any failure after
            if remaining is not None and infer_request.timeout_s is None:
                infer_request.timeout_s = remaining
            return await model.infer(infer_request)

        model, outputs = await self._dp.run(request.model_name, request.model_version, call, start)
        declared = {n: s.datatype for n, s in model.outputs.items()}
        return encode_response(model.name, model.version, request.id, outputs, declared)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in order; a failed request yields its error message and
        the stream goes on."""
        async for request in request_iterator:
            try:
                reply = await self.ModelInfer(request, context)
            except ServingError as err:
                _, message = status_for(err)
                yield pb.ModelStreamInferResponse(
                    error_message=message,
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, id=request.id
                    ),
                )
                continue
            yield pb.ModelStreamInferResponse(infer_response=reply)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        return await repository.model_statistics(self._dp, self._peers, request)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return repository.repository_index(self._dp, request)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await repository.load_model(self._dp, request)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await repository.unload_model(self._dp, request)
        return pb.RepositoryModelUnloadResponse()


for _rpc, _feature in UNSUPPORTED_RPCS.items():
    setattr(InferenceServicer, _rpc, _unsupported(_rpc, _feature))
