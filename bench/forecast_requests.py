"""One batch-1 forecast request of each API, built from the server's own metadata: a V2
ModelInfer (random normal inputs) and a typed Forecast (one window of random values at the
model's frequency), for the benchmarks that send both."""

from __future__ import annotations

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as fgrpc
from serving import tensors
from serving.client import Client


async def v2_request(channel: grpc.aio.Channel, model: str, seed: int = 0) -> pb.ModelInferRequest:
    meta = await pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
        pb.ModelMetadataRequest(name=model), timeout=10
    )
    rng = np.random.default_rng(seed)
    infer = pb.ModelInferRequest(model_name=model)
    for t in meta.inputs:
        array = rng.standard_normal((1, *t.shape[1:])).astype(np.float32)  # B=1
        infer.inputs.add(name=t.name, datatype=t.datatype, shape=array.shape)
        infer.raw_input_contents.append(tensors.to_raw(array, t.datatype))
    return infer


async def forecast_request(
    channel: grpc.aio.Channel, model: str, seed: int = 0
) -> fpb.ForecastRequest:
    info = await fgrpc.ForecasterStub(channel).GetModelInfo(
        fpb.GetModelInfoRequest(model_name=model), timeout=10
    )
    m = info.model
    rng = np.random.default_rng(seed)
    step = m.frequency.seconds or 3600
    start = np.datetime64("2024-01-01T00:00:00", "s")
    stamps = [start + np.timedelta64(i * step, "s") for i in range(m.input_window)]
    series = {
        name: rng.standard_normal(m.input_window).tolist()
        for name in (*m.target_names, *m.covariate_names)
    }
    window = Client.window(series, stamps)
    for name in m.future_covariate_names:
        window.future.add(name=name, values=[0.0] * m.horizon)
    return fpb.ForecastRequest(model_name=model, windows=[window])
