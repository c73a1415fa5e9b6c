"""The gRPC floor: a minimal grpc.aio V2 server that computes nothing.

It answers what perf_analyzer asks (liveness, readiness, metadata, config) for one model of a
repository, and ModelInfer with zero-filled outputs of the declared shapes: no queue, no
batching, no onnxruntime, no metrics. Its latency is what any Python grpc.aio server pays per
call on this machine; `seqserve bench serving` measures it beside the real server, so the
served overhead can be read against what the transport alone costs.

With `--native`, the native front end (serving/native) listens in front of it and runs the
model's ModelInfer on its fast path with a runner that returns zeros: the C++ transport, the
queue and one Python call per batch, without onnxruntime. That is the native front end's floor.
With `--native --bare` the fast path has no runner and answers zeros in C++: no Python per
request or batch at all, the floor of any gRPC server on the machine.

    python -m bench.floor_server --model-dir model_repository/forecaster_gru --port 18011
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pbg
from serving.repository import read_config
from serving.tensors import CONFIG_TO_V2, DTYPES


class FloorServicer(pbg.GRPCInferenceServiceServicer):
    def __init__(self, model_dir: Path) -> None:
        self.config = read_config(model_dir)
        self.config.name = model_dir.name
        batch = [-1] if self.config.max_batch_size else []
        self.metadata = pb.ModelMetadataResponse(
            name=self.config.name,
            versions=["1"],
            platform=self.config.platform,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=CONFIG_TO_V2[t.data_type], shape=[*batch, *t.dims]
                )
                for t in self.config.input
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=CONFIG_TO_V2[t.data_type], shape=[*batch, *t.dims]
                )
                for t in self.config.output
            ],
        )

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: object
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: object
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="grpc-floor", version="0", extensions=[])

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: object
    ) -> pb.ModelStatisticsResponse:
        return pb.ModelStatisticsResponse()  # nothing is computed, nothing to report

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: object
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: object
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: object
    ) -> pb.ModelMetadataResponse:
        return self.metadata

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: object
    ) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.config)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: object
    ) -> pb.ModelInferResponse:
        batch = request.inputs[0].shape[0] if self.config.max_batch_size else None
        reply = pb.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for t in self.config.output:
            shape = [batch, *t.dims] if batch is not None else list(t.dims)
            dtype = CONFIG_TO_V2[t.data_type]
            reply.outputs.add(name=t.name, datatype=dtype, shape=shape)
            reply.raw_output_contents.append(np.zeros(shape, DTYPES[dtype]).tobytes())
        return reply


def _native_front(servicer: FloorServicer, port: int, upstream: str, bare: bool) -> object:
    """The native front end on `port`, with the model on its fast path answering zeros (from
    a Python runner, or with `bare` from C++ alone)."""
    from serving.native import _frontend
    from serving.stats import ModelStats

    config = servicer.config
    specs = [
        [
            _frontend.TensorSpec(
                t.name,
                CONFIG_TO_V2[t.data_type],
                list(t.dims),
                DTYPES[CONFIG_TO_V2[t.data_type]].itemsize,
            )
            for t in ts
        ]
        for ts in (config.input, config.output)
    ]

    def run(instance: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = next(iter(feeds.values())).shape[0]
        return {
            t.name: np.zeros([batch, *t.dims], DTYPES[CONFIG_TO_V2[t.data_type]])
            for t in config.output
        }

    stats = ModelStats()  # accounted as the server does, so the floor pays that call too
    front = _frontend.Frontend(f"127.0.0.1:{port}", upstream, 2**31 - 1)
    front.add_model(
        config.name,
        1,
        specs[0],
        specs[1],
        _frontend.Policy(
            max_batch_size=config.max_batch_size,
            batching=config.max_batch_size > 0,
            max_queue_delay_us=0,
            preferred_batch_sizes=[],
            max_queue_size=0,
            default_timeout_us=0,
            instances=1,
        ),
        None if bare else run,
        stats.record_batch,
        lambda kind, ns, detail: (13, kind),
        queue_full_message="queue full",
        unloading_message="unloading",
    )
    front.set_default(config.name, 1)
    front.start()
    return front


async def serve(model_dir: Path, port: int, native: bool = False, bare: bool = False) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1)])
    servicer = FloorServicer(model_dir)
    pbg.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    with tempfile.TemporaryDirectory() as tmp:
        upstream = f"unix:{tmp}/grpc.sock"
        server.add_insecure_port(upstream if native else f"127.0.0.1:{port}")
        await server.start()
        front = _native_front(servicer, port, upstream, bare) if native else None
        await server.wait_for_termination()
        del front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--native",
        action="store_true",
        help="the native front end in front, the model on its fast path",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="with --native: no runner, zeros from C++ (no Python at all)",
    )
    args = parser.parse_args()
    if args.bare and not args.native:
        parser.error("--bare goes with --native")
    asyncio.run(serve(args.model_dir, args.port, args.native, args.bare))


if __name__ == "__main__":
    main()
