"""The one dataplane behind every protocol adapter: readiness, model lookup, inference with
timing and failure accounting, statistics, repository control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from core.errors import (
    FailureReason,
    InvalidInput,
    ServerNotReady,
    ServingError,
    Unsupported,
)
from protos.inference import model_config_pb2 as mc
from serving import metrics
from serving.models.base import InferRequest, ServedModel
from serving.repository import ModelRepository, State
from serving.settings import ModelControlMode

SERVER_NAME = "seqserve"
T = TypeVar("T")


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


class DataPlane:
    """Protocol-independent server logic. Adapters convert wire messages and call it."""

    # Only what seqserve really implements is advertised: perf_analyzer and tritonclient act on
    # this list (for example, "statistics" makes perf_analyzer call ModelStatistics).
    EXTENSIONS: tuple[str, ...] = (
        "model_repository",
        "schedule_policy",
        "model_configuration",
        "binary_tensor_data",
        "parameters",
        "statistics",
    )

    def __init__(
        self,
        repository: ModelRepository,
        version: str,
        control_mode: ModelControlMode = ModelControlMode.NONE,
    ) -> None:
        self.repository = repository
        self._version = version
        self._control_mode = control_mode
        self._ready = False
        self._draining = False

    # -- server ----------------------------------------------------------------------------

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def start_draining(self) -> None:
        self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return self._ready and not self._draining

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, self._version, self.EXTENSIONS)

    # -- models ----------------------------------------------------------------------------

    def model(self, name: str, version: str = "") -> ServedModel:
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.get(name, version)
        except ServingError:
            return False
        return not self._draining

    def model_versions(self, name: str) -> list[str]:
        return [str(v) for v in self.repository.versions(name)]

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self.model(name, version).config

    async def infer(
        self, name: str, version: str, request: InferRequest, start_ns: int | None = None
    ) -> tuple[ServedModel, dict[str, np.ndarray]]:
        """Run one V2 request; account its outcome in the model's statistics and metrics."""
        return await self.run(name, version, lambda model: model.infer(request), start_ns)

    async def run(
        self,
        name: str,
        version: str,
        call: Callable[[ServedModel], Awaitable[T]],
        start_ns: int | None = None,
    ) -> tuple[ServedModel, T]:
        """Run `call(model)` on the resolved model, with the same readiness checks, statistics
        and metrics for every protocol (V2, typed APIs)."""
        start_ns = start_ns or time.perf_counter_ns()
        model = self._resolve(name, version)
        with self._accounted(model, start_ns):
            return model, await call(model)

    async def stream(
        self, name: str, version: str, call: Callable[[ServedModel], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        """Like `run`, for calls that yield a stream of results."""
        start_ns = time.perf_counter_ns()
        model = self._resolve(name, version)
        with self._accounted(model, start_ns):
            async for item in call(model):
                yield item

    def _resolve(self, name: str, version: str) -> ServedModel:
        if self._draining:
            raise ServerNotReady("server is shutting down; retry on another replica")
        return self.repository.get(name, version)

    @contextmanager
    def _accounted(self, model: ServedModel, start_ns: int) -> Iterator[None]:
        stats = model.stats
        stats.add_pending(1)
        reason: FailureReason | None = None
        try:
            yield
        except ServingError as err:
            reason = err.reason
            raise
        except (asyncio.CancelledError, GeneratorExit):
            reason = FailureReason.CANCELED
            raise
        except Exception:
            reason = FailureReason.OTHER
            raise
        finally:
            stats.add_pending(-1)
            elapsed = time.perf_counter_ns() - start_ns
            if reason is None:
                stats.record_success(elapsed)
            else:
                stats.record_failure(elapsed, reason)
            metrics.REQUEST_SECONDS.labels(model.name, str(model.version)).observe(elapsed / 1e9)

    def statistics(self, name: str = "", version: str = "") -> list[ServedModel]:
        if name:
            if version:
                return [self.repository.get(name, version)]
            self.repository.get(name, "")  # NOT_FOUND / UNAVAILABLE
            return [m for m in self.repository.ready_models() if m.name == name]
        return sorted(self.repository.ready_models(), key=lambda m: (m.name, m.version))

    # -- repository ------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[tuple[str, str, State, str]]:
        rows = self.repository.index()
        return [r for r in rows if r[2] is State.READY] if ready_only else rows

    def _check_explicit(self, rpc: str) -> None:
        if self._control_mode is not ModelControlMode.EXPLICIT:
            raise Unsupported(
                f"{rpc}: model control mode is {self._control_mode.value}; "
                "start the server with --model-control-mode explicit"
            )

    async def load(self, name: str, config_override: str | None = None) -> None:
        self._check_explicit("RepositoryModelLoad")
        failed = await self.repository.load(name, config_override)
        if failed:  # even when earlier versions go on serving, as Triton answers
            serving = self.model_versions(name)
            still = f" (version {', '.join(serving)} still serving)" if serving else ""
            raise InvalidInput(f"failed to load model '{name}': {'; '.join(failed)}{still}")

    async def unload(self, name: str) -> None:
        self._check_explicit("RepositoryModelUnload")
        await self.repository.unload(name)
