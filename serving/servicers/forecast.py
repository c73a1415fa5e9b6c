"""`seqserve.forecast.v1.Forecaster` adapter: proto <-> `serving.forecasting`, inference
through the same dataplane (batching, metrics, errors) as the V2 protocol."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence

import grpc
import numpy as np
from google.protobuf.duration_pb2 import Duration
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import InvalidInput, ServingError
from protos.seqserve.forecast.v1 import forecast_service_pb2 as pb
from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from serving.dataplane import DataPlane
from serving.forecasting import (
    MAX_NS,
    ForecasterSpec,
    Prepared,
    Window,
    nanoseconds,
    prepare,
    quantile_indices,
)
from serving.models.base import InferRequest, ServedModel

SERVICE_NAME = "seqserve.forecast.v1.Forecaster"


# Seconds whose nanoseconds cannot overflow int64, whatever the nanos (an int32).
_SAFE_S = MAX_NS // 1_000_000_000 - 3


def _times(stamps: Sequence[Timestamp], where: str) -> np.ndarray:
    seconds = np.fromiter((t.seconds for t in stamps), np.int64, len(stamps))
    nanos = np.fromiter((t.nanos for t in stamps), np.int64, len(stamps))
    edge = (seconds > _SAFE_S) | (seconds < -_SAFE_S)
    ns = np.where(edge, 0, seconds) * 1_000_000_000 + nanos
    for i in np.flatnonzero(edge).tolist():  # exactly, in Python integers (raises, naming it)
        ns[i] = nanoseconds(int(seconds[i]), int(nanos[i]), f"{where}[{i}]")
    return ns.astype("datetime64[ns]")


def _stamps(times: np.ndarray, into: RepeatedCompositeFieldContainer[Timestamp]) -> None:
    seconds, nanos = np.divmod(times.astype("datetime64[ns]").astype(np.int64), 1_000_000_000)
    for s, n in zip(seconds.tolist(), nanos.tolist(), strict=True):
        into.add(seconds=s, nanos=n)


def _window(w: pb.Window, index: int) -> Window:
    past: dict[str, np.ndarray] = {}
    for s in w.past:
        if s.name in past:
            raise InvalidInput(f"windows[{index}].past: series '{s.name}' given twice")
        past[s.name] = np.asarray(s.values, np.float32)
    return Window(
        past=past,
        timestamps=(_times(w.timestamps, f"windows[{index}].timestamps") if w.timestamps else None),
        start=(_times([w.start], f"windows[{index}].start")[0] if w.HasField("start") else None),
        frequency_ns=(
            nanoseconds(w.frequency.seconds, w.frequency.nanos, f"windows[{index}].frequency")
            if w.HasField("frequency")
            else None
        ),
        frequency_alias=w.frequency_alias,
        future={s.name: np.asarray(s.values, np.float32) for s in w.future},
    )


def _response(
    model: ServedModel,
    spec: ForecasterSpec,
    levels: list[int],
    prepared: Prepared,
    results: list[dict[str, np.ndarray]],
) -> pb.ForecastResponse:
    forecast = np.concatenate([out["forecast"] for out in results])  # [B, H, F_out]
    quantiles = (
        np.concatenate([out["quantiles"] for out in results])  # [B, H, F_out, Q]
        if levels and "quantiles" in results[0]
        else None
    )
    reply = pb.ForecastResponse(model_name=model.name, model_version=str(model.version))
    for b, horizon in enumerate(prepared.horizon_timestamps):
        wf = reply.forecasts.add()
        if horizon is not None:
            _stamps(horizon, wf.timestamps)
        for f, target in enumerate(spec.target_names):
            sf = wf.targets.add(name=target, point=forecast[b, :, f].tolist())
            if quantiles is not None:
                for q in levels:
                    sf.quantiles.add(level=spec.quantiles[q], values=quantiles[b, :, f, q].tolist())
    return reply


class ForecasterServicer(pb_grpc.ForecasterServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane
        self._specs: weakref.WeakKeyDictionary[ServedModel, ForecasterSpec] = (
            weakref.WeakKeyDictionary()
        )

    def _spec(self, model: ServedModel) -> ForecasterSpec:
        spec = self._specs.get(model)
        if spec is None:
            spec = self._specs[model] = ForecasterSpec.of(model)
        return spec

    async def Forecast(
        self, request: pb.ForecastRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForecastResponse:
        timeout = context.time_remaining()  # the deadline bounds the queue wait, as in V2

        async def call(model: ServedModel) -> pb.ForecastResponse:
            spec = self._spec(model)
            levels = quantile_indices(spec, list(request.quantile_levels))
            prepared = prepare(spec, [_window(w, i) for i, w in enumerate(request.windows)])
            step = model.max_batch_size or 1
            chunks = [
                {n: a[i : i + step] for n, a in prepared.inputs.items()}
                for i in range(0, len(request.windows), step)
            ]
            results = await asyncio.gather(
                *(model.infer(InferRequest(inputs=c, timeout_s=timeout)) for c in chunks)
            )
            return _response(model, spec, levels, prepared, results)

        # One typed call is one request of the model's statistics, whatever its chunks.
        _, reply = await self._dp.run(request.model_name, request.model_version, call)
        return reply

    def _info(self, model: ServedModel) -> pb.ModelInfo:
        spec = self._spec(model)
        info = pb.ModelInfo(
            name=spec.name,
            versions=self._dp.model_versions(spec.name),
            input_window=spec.input_window,
            horizon=spec.horizon,
            target_names=spec.target_names,
            covariate_names=[f for f in spec.past_features if f not in spec.target_names],
            future_covariate_names=spec.known_future,
            calendar_features=spec.calendar,
            quantile_levels=spec.quantiles,
            architecture=spec.architecture,
            metrics=spec.metrics,
        )
        if spec.frequency is not None:
            info.frequency_alias = spec.frequency.alias
            info.holidays.extend(spec.frequency.holidays)
        if spec.frequency_ns:
            info.frequency.CopyFrom(
                Duration(
                    seconds=spec.frequency_ns // 1_000_000_000,
                    nanos=spec.frequency_ns % 1_000_000_000,
                )
            )
        return info

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        reply = pb.ListModelsResponse()
        for name in sorted({m.name for m in self._dp.repository.ready_models()}):
            try:
                reply.models.append(self._info(self._dp.model(name)))
            except ServingError:
                continue  # not a forecaster, or unloading since the scan
        return reply

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        model = self._dp.model(request.model_name, request.model_version)
        return pb.GetModelInfoResponse(model=self._info(model))
