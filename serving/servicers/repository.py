"""The KServe V2 protocol's statistics and model-repository calls over the dataplane, in the
protocol's messages: what `inference.GRPCInferenceService` answers and what the REST adapter
answers in JSON, one set of rules for both."""

from __future__ import annotations

from core.errors import InvalidInput, Unsupported
from protos.inference import grpc_service_pb2 as pb
from serving.dataplane import DataPlane
from serving.peers import STATISTICS_PATH, Peers
from serving.servicers.statistics import add_statistics, statistics_response


async def model_statistics(
    dp: DataPlane, peers: Peers | None, request: pb.ModelStatisticsRequest
) -> pb.ModelStatisticsResponse:
    """This process's figures; a worker's (`peers`: its siblings under --workers N) are the
    sum of all the server's workers."""
    reply = statistics_response(dp.statistics(request.name, request.version))
    if peers is not None:
        for body in await peers.fetch(STATISTICS_PATH):
            add_statistics(reply, pb.ModelStatisticsResponse.FromString(body))
    return reply


def repository_index(
    dp: DataPlane, request: pb.RepositoryIndexRequest
) -> pb.RepositoryIndexResponse:
    if request.repository_name:
        raise InvalidInput("repository_name: seqserve serves one repository; leave it empty")
    reply = pb.RepositoryIndexResponse()
    for name, version, state, reason in dp.repository_index(request.ready):
        reply.models.add(name=name, version=version, state=state.value, reason=reason)
    return reply


async def load_model(dp: DataPlane, request: pb.RepositoryModelLoadRequest) -> None:
    """Load (or reload) a model; the one parameter understood is `config`, a config.pbtxt
    override."""
    override = None
    for key, param in request.parameters.items():
        if key == "config":
            override = param.string_param
        elif key.startswith("file:"):
            raise Unsupported(
                "RepositoryModelLoad: model files in the request are not "
                "supported; put them in the repository"
            )
        else:
            raise InvalidInput(f"RepositoryModelLoad: unknown parameter '{key}'")
    await dp.load(request.model_name, override)


async def unload_model(dp: DataPlane, request: pb.RepositoryModelUnloadRequest) -> None:
    await dp.unload(request.model_name)
