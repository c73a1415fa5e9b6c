"""What every served model offers the dataplane: its tensor specs, validation, inference."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import InvalidInput
from protos.inference import model_config_pb2 as mc
from serving.stats import ModelStats
from serving.tensors import CONFIG_TO_V2, v2_datatype


@dataclass(frozen=True)
class TensorSpec:
    """One declared input or output; `dims` exclude the batch dimension (-1 = variable)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False

    def shape(self, batching: bool) -> list[int]:
        return [-1, *self.dims] if batching else list(self.dims)


@dataclass
class InferRequest:
    """A request in numpy form, as the dataplane hands it to a model."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] = ()  # requested outputs; empty = all
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None  # longest time it may wait in a queue
    id: str = ""


def input_specs(config: mc.ModelConfig) -> dict[str, TensorSpec]:
    return {
        t.name: TensorSpec(t.name, CONFIG_TO_V2[t.data_type], tuple(t.dims), t.optional)
        for t in config.input
    }


def output_specs(config: mc.ModelConfig) -> dict[str, TensorSpec]:
    return {
        t.name: TensorSpec(t.name, CONFIG_TO_V2[t.data_type], tuple(t.dims)) for t in config.output
    }


def parameter(config: mc.ModelConfig, key: str, default: Any = None) -> Any:
    """A `parameters` value, JSON-decoded when it is JSON."""
    if key not in config.parameters:
        return default
    text = config.parameters[key].string_value
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class ServedModel(ABC):
    """One loaded version of one model."""

    def __init__(self, name: str, version: int, config: mc.ModelConfig) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.inputs = input_specs(config)
        self.outputs = output_specs(config)
        self.max_batch_size = config.max_batch_size
        self.stats = ModelStats()
        self.availability_changed: Callable[[], None] = lambda: None  # set by the repository

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    def check_input(self, name: str, datatype: str, shape: Sequence[int]) -> None:
        """One input's name, datatype and shape against the config, before its payload is
        decoded: what a request claims is checked before the server spends anything on it."""
        model = f"model '{self.name}'"
        spec = self.inputs.get(name)
        if spec is None:
            raise InvalidInput(
                f"unexpected input '{name}' for {model}; it takes: {', '.join(self.inputs)}"
            )
        if datatype != spec.datatype:
            raise InvalidInput(
                f"input '{name}': datatype {datatype}, {model} takes {spec.datatype}"
            )
        dims = list(shape)
        if self.batching:
            if len(dims) != len(spec.dims) + 1:
                raise InvalidInput(
                    f"input '{name}': shape {dims} does not match {spec.shape(True)}"
                )
            if dims[0] > self.max_batch_size:
                raise InvalidInput(
                    f"input '{name}': batch size {dims[0]} exceeds "
                    f"max_batch_size {self.max_batch_size} of {model}"
                )
            dims = dims[1:]
        if len(dims) != len(spec.dims) or any(
            d != want and want != -1 for d, want in zip(dims, spec.dims, strict=True)
        ):
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} does not match {spec.shape(self.batching)}"
            )

    def validate(self, request: InferRequest) -> int:
        """Check names, datatypes, shapes and values; return the batch size (1 if unbatched)."""
        model = f"model '{self.name}'"
        for name, array in request.inputs.items():
            self.check_input(name, v2_datatype(array), array.shape)
        missing = [n for n, s in self.inputs.items() if not s.optional and n not in request.inputs]
        if missing:
            raise InvalidInput(f"missing input '{missing[0]}' for {model}")
        bad = [n for n in request.outputs if n not in self.outputs]
        if bad:
            raise InvalidInput(
                f"unknown output '{bad[0]}' requested from {model}; it has: "
                f"{', '.join(self.outputs)}"
            )
        batch = None
        for name, array in request.inputs.items():
            if self.batching:
                if batch is None:
                    batch = array.shape[0]
                elif array.shape[0] != batch:
                    raise InvalidInput(
                        f"input '{name}': batch size {array.shape[0]} differs "
                        f"from the other inputs' {batch}"
                    )
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise InvalidInput(f"input '{name}': contains NaN or infinite values")
        if self.batching:
            if not batch or batch < 1:
                raise InvalidInput(f"batch size must be at least 1, got {batch}")
            return batch
        return 1

    def start(self) -> None:  # noqa: B027 - optional hook
        """Called on the event loop once loading (on a thread) is done: start queues, tasks."""

    @abstractmethod
    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        """Run one validated request; return the requested outputs (all when none named)."""

    def statistics(self) -> ModelStats:
        """A consistent snapshot of the statistics: what /metrics and ModelStatistics read."""
        return self.stats.snapshot()

    @property
    def queue_size(self) -> int:
        return 0

    @property
    def fast_path_requests(self) -> int | None:
        """Requests the native front end ran without the Python server, or None when the
        version is not on its fast path."""
        return None

    @property
    def pending(self) -> int:
        """Requests received and not yet answered."""
        return self.stats.pending

    @property
    def unavailable(self) -> str | None:
        """Why a loaded version cannot serve for now (e.g. its engine process is restarting),
        or None. Call `availability_changed()` when it changes: health and ModelReady follow."""
        return None

    @property
    def engine_pid(self) -> int | None:
        """The model's own process beside the server's, if it has one (the translator's
        engine), for its CPU and memory series."""
        return None

    @property
    def engine_restarts(self) -> dict[str, int] | None:
        """How often the model's own process was restarted, by reason ("exited": it died;
        "stalled": it held requests but made no progress), or None when it has none."""
        return None

    @property
    def queue_capacity(self) -> int:
        return 0

    @abstractmethod
    async def drain_and_close(self) -> None:
        """Refuse new requests, finish the queued and in-flight ones, release resources."""

    def kill(self) -> None:  # noqa: B027 - optional hook
        """Stop at once, dropping what is in flight (the drain ran out of time): end the
        model's own processes, if it has any."""
