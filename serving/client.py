"""A small Python client for seqserve's typed APIs (no torch; grpcio and numpy only).

    from serving.client import Client
    with Client("127.0.0.1:8001") as c:
        f = c.forecast("forecaster_gru", {"price": [...], "index": [...]}, timestamps=[...])
        print(f.timestamps, f.point["price"], f.quantiles["price"][0.9])
        print(c.translate(["dreihundertzweiundvierzig"])[0].text)

Every call takes a deadline (`timeout`, seconds). Calls are retried with jittered exponential
back-off only where the server's status table says a retry is right: UNAVAILABLE (loading,
draining) and RESOURCE_EXHAUSTED from a full queue; never INVALID_ARGUMENT, NOT_FOUND,
DEADLINE_EXCEEDED or INTERNAL.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as fgrpc
from protos.seqserve.translate.v1 import translate_service_pb2 as tpb
from protos.seqserve.translate.v1 import translate_service_pb2_grpc as tgrpc

T = TypeVar("T")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def _retryable(err: grpc.RpcError) -> bool:
    code = err.code()
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "queue full" in (err.details() or "")  # not an oversized message
    return code in RETRYABLE


def _stamp(t: Any) -> Timestamp:
    ns = int(np.datetime64(t, "ns").astype(np.int64))
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


@dataclass(frozen=True)
class Forecast:
    """One window's forecast: timestamps, point forecast and quantiles per target series."""

    timestamps: list[np.datetime64]
    point: dict[str, list[float]]
    quantiles: dict[str, dict[float, list[float]]] = field(default_factory=dict)
    model_version: str = ""


@dataclass(frozen=True)
class Translation:
    text: str
    score: float
    num_tokens: int
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # n-best after the best


class Client:
    """Connection to one seqserve server."""

    def __init__(
        self,
        target: str = "127.0.0.1:8001",
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.1,
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """`channel_options` go to the gRPC channel as they are, e.g.
        [("grpc.lb_policy_name", "round_robin")] with a `dns:///` target naming a headless
        Service, to spread calls over every replica."""
        # gRPC takes the first of repeated keys: the caller's options come first and win.
        options = [
            *channel_options,
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ]
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert)
            self._channel = grpc.secure_channel(target, creds, options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._forecaster = fgrpc.ForecasterStub(self._channel)
        self._translator = tgrpc.TranslatorStub(self._channel)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, fn: Callable[..., T], request: Any, timeout: float | None) -> T:
        deadline = time.monotonic() + (timeout or self.timeout)
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            try:
                return fn(request, timeout=max(remaining, 0.001))
            except grpc.RpcError as err:
                if attempt == self.retries or not _retryable(err):
                    raise
                pause = self.backoff * 2**attempt * random.uniform(0.5, 1.5)
                if time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    # -- forecasting -------------------------------------------------------------------------

    @staticmethod
    def window(
        series: Mapping[str, Sequence[float]],
        timestamps: Sequence[Any] | None = None,
        future: Mapping[str, Sequence[float]] | None = None,
    ) -> fpb.Window:
        w = fpb.Window(
            past=[fpb.Series(name=k, values=list(map(float, v))) for k, v in series.items()],
            future=[
                fpb.Series(name=k, values=list(map(float, v))) for k, v in (future or {}).items()
            ],
        )
        if timestamps is not None:
            w.timestamps.extend(_stamp(t) for t in timestamps)
        return w

    def forecast_windows(
        self,
        model: str,
        windows: Sequence[fpb.Window],
        quantiles: Sequence[float] = (),
        version: str = "",
        timeout: float | None = None,
    ) -> list[Forecast]:
        request = fpb.ForecastRequest(
            model_name=model,
            model_version=version,
            windows=list(windows),
            quantile_levels=list(quantiles),
        )
        reply = self._call(self._forecaster.Forecast, request, timeout)
        out = []
        for f in reply.forecasts:
            out.append(
                Forecast(
                    timestamps=[
                        np.datetime64(t.seconds * 10**9 + t.nanos, "ns") for t in f.timestamps
                    ],
                    point={t.name: list(t.point) for t in f.targets},
                    quantiles={
                        t.name: {round(q.level, 6): list(q.values) for q in t.quantiles}
                        for t in f.targets
                    },
                    model_version=reply.model_version,
                )
            )
        return out

    def forecast(
        self,
        model: str,
        series: Mapping[str, Sequence[float]],
        timestamps: Sequence[Any] | None = None,
        future: Mapping[str, Sequence[float]] | None = None,
        quantiles: Sequence[float] = (),
        timeout: float | None = None,
    ) -> Forecast:
        """Forecast one window of named series."""
        return self.forecast_windows(
            model, [self.window(series, timestamps, future)], quantiles, timeout=timeout
        )[0]

    def model_info(self, model: str, timeout: float | None = None) -> fpb.ModelInfo:
        reply = self._call(
            self._forecaster.GetModelInfo, fpb.GetModelInfoRequest(model_name=model), timeout
        )
        return reply.model

    def list_forecasters(self, timeout: float | None = None) -> list[fpb.ModelInfo]:
        return list(
            self._call(self._forecaster.ListModels, fpb.ListModelsRequest(), timeout).models
        )

    # -- translation -------------------------------------------------------------------------

    def translate(
        self,
        sentences: Sequence[str],
        model: str = "translator",
        beam_size: int = 0,
        max_length: int = 0,
        length_penalty: float | None = None,
        n_best: int = 1,
        timeout: float | None = None,
    ) -> list[Translation]:
        """`length_penalty` None: the model's default (0 = none)."""
        request = tpb.TranslateRequest(
            model_name=model,
            sentences=list(sentences),
            beam_size=beam_size,
            max_length=max_length,
            length_penalty=length_penalty,
            num_hypotheses=n_best,
        )
        reply = self._call(self._translator.Translate, request, timeout)
        out = []
        for t in reply.translations:
            best, *rest = t.hypotheses
            out.append(
                Translation(
                    best.text, best.score, best.num_tokens, [(h.text, h.score) for h in rest]
                )
            )
        return out

    def translate_stream(
        self,
        sentence: str,
        model: str = "translator",
        max_length: int = 0,
        timeout: float | None = None,
    ) -> Iterator[str]:
        """Text pieces of one sentence's translation as they are decoded (greedy)."""
        request = tpb.TranslateRequest(
            model_name=model, sentences=[sentence], beam_size=1, max_length=max_length
        )
        for chunk in self._translator.TranslateStream(request, timeout=timeout or self.timeout):
            if chunk.text:
                yield chunk.text
