"""The native front end's Python side: listen in C++ in front of the Python gRPC server, and
put each ready tensor model version on its fast path.

With `--frontend native` the C++ server (serving/native/*.cc, built by `make native`) owns the
gRPC port. For a model version on the fast path it runs V2 ModelInfer itself: parse, check
(the request must be exactly what the model takes, as raw tensors with no parameters), queue,
dynamic batching with the config's policy, and the reply; Python is called once per batch, to
run the batch on the model's onnxruntime session (`OnnxModel.run_batch`) and to account it in
the model's statistics. The typed Forecaster API is answered in process, by the servicer the Python
server registers, without the hop (`serving.native.in_process`). Everything else (other RPCs,
the translator, health, reflection, and any request the fast path does not take as it is, so
every malformed one) is forwarded unchanged to the Python server on a private Unix socket,
which answers it as it would alone. Errors of the fast path itself (queue full, deadline
passed in the queue, cancelled, onnxruntime failure, unloading) get their status and message
here, from `status_for`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import tempfile
from pathlib import Path
from typing import Any

import grpc

from core.errors import (
    DeadlineExceeded,
    FailureReason,
    InferenceError,
    InvalidInput,
    ModelNotReady,
    QueueFull,
    ServingError,
)
from serving import metrics, restricted
from serving.batcher import BatchPolicy
from serving.forecasting import ForecasterSpec
from serving.interceptors import status_for
from serving.metrics import FrontendCollector
from serving.models.base import ServedModel, TensorSpec
from serving.models.onnx_model import OnnxModel
from serving.native.in_process import InProcess
from serving.settings import Frontend, Settings
from serving.tensors import DTYPES

log = logging.getLogger(__name__)

try:
    from serving.native import _frontend
except ImportError as err:  # not built: `make native`
    _frontend = None
    IMPORT_ERROR: str | None = str(err)
else:
    IMPORT_ERROR = None


def loopback(address: str) -> bool:
    """Whether a --grpc-address only takes connections from this machine."""
    host = address.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


# Why `auto` keeps the native front end off addresses others can reach (docs/serving.md,
# "HTTP/2 abuse"): Debian's gRPC 1.51 has no defence against Rapid Reset.
EXPOSED = (
    "the native front end's HTTP/2 stack (Debian's gRPC 1.51) has no defence against "
    "Rapid Reset (CVE-2023-44487)"
)


def wanted(settings: Settings) -> bool:
    """Whether to run the native front end; raise if it is asked for and not built. `auto`
    takes it only on a loopback address."""
    if settings.frontend is Frontend.PYTHON:
        return False
    if _frontend is None:
        if settings.frontend is Frontend.NATIVE:
            raise SystemExit(
                f"seqserve: --frontend native, but the native front end is not "
                f"built ({IMPORT_ERROR}); run `make native`"
            )
        log.info("native front end not built (%s): serving with the Python one", IMPORT_ERROR)
        return False
    if not loopback(settings.grpc_address):
        if settings.frontend is Frontend.AUTO:
            log.info(
                "--grpc-address %s is not loopback: serving with the Python front end, as "
                "%s; put a proxy in front and ask for --frontend native to use it",
                settings.grpc_address,
                EXPOSED,
            )
            return False
        log.warning(
            "--frontend native on %s, which others may reach: %s; put a proxy in front of it",
            settings.grpc_address,
            EXPOSED,
        )
    return True


def _tensor(spec: TensorSpec) -> Any:
    return _frontend.TensorSpec(
        spec.name, spec.datatype, list(spec.dims), DTYPES[spec.datatype].itemsize
    )


def signature(model: ServedModel, p: BatchPolicy) -> tuple[list[Any], list[Any], Any]:
    """The fast path's view of a model version (accept.h): its tensors and batching policy."""
    policy = _frontend.Policy(
        max_batch_size=p.max_batch_size,
        batching=p.batching,
        max_queue_delay_us=round(p.max_queue_delay_s * 1e6),
        preferred_batch_sizes=list(p.preferred_batch_sizes),
        max_queue_size=p.max_queue_size,
        default_timeout_us=round((p.default_timeout_s or 0) * 1e6),
        instances=p.instances,
    )
    inputs = [_tensor(s) for s in model.inputs.values()]
    return inputs, [_tensor(s) for s in model.outputs.values()], policy


def forecast_spec(model: ServedModel) -> Any:
    """What the fast path needs to take typed Forecast calls for `model` (forecast.h): a
    forecaster on a fixed step of seconds, minutes, hours or days, with FP32 tensors; None for
    any other model, whose typed calls the Python servicer answers."""
    try:
        spec = ForecasterSpec.of(model)
    except (InvalidInput, TypeError, ValueError):  # not a forecaster, or parameters unusable
        return None
    freq = spec.frequency
    if freq is None or freq.fixed_ns is None or freq.alias.startswith("W-"):
        return None  # weeks are anchored on a weekday: left to Python's calendar check
    L, H = spec.input_window, spec.horizon  # noqa: N806 - the repo's shape letters
    targets, levels = len(spec.target_names), len(spec.quantiles)
    # The C++ reads the outputs at these shapes: the config must say exactly that.
    expected = {
        ("past", "in"): [L, len(spec.past_features)],
        ("forecast", "out"): [H, targets],
    }
    if spec.future_features:
        expected["future", "in"] = [H, len(spec.future_features)]
    if spec.quantiles:
        expected["quantiles", "out"] = [H, targets, levels]
    for (name, side), dims in expected.items():
        tensor = (model.inputs if side == "in" else model.outputs).get(name)
        if tensor is None or tensor.datatype != "FP32" or list(tensor.dims) != dims:
            return None
    return _frontend.ForecastSpec(
        input_window=spec.input_window,
        horizon=spec.horizon,
        past_features=list(spec.past_features),
        target_names=list(spec.target_names),
        future_features=list(spec.future_features),
        step_ns=freq.fixed_ns,
        quantiles=list(spec.quantiles),
    )


class SharedBudget:
    """The native front end's request-bytes budget as the HTTP port takes from it
    (serving/rest/budget.py's `Budget`): one budget for both ports."""

    def __init__(self, server: Any) -> None:
        self._server = server

    @property
    def limit(self) -> int:
        return self._server.request_bytes_limit

    @property
    def held(self) -> int:
        return self._server.request_bytes_in_flight

    def take(self, n: int, mine: int) -> bool:
        return self._server.take_request_bytes(n, mine)

    def give(self, n: int) -> None:
        self._server.give_request_bytes(n)


class NativeFrontend:
    """The C++ server on `settings.grpc_target`, forwarding to `upstream` what it leaves."""

    def __init__(self, settings: Settings) -> None:
        assert _frontend is not None
        self._dir = tempfile.TemporaryDirectory(prefix="seqserve-")  # 0700: ours alone
        self.upstream = f"unix:{Path(self._dir.name) / 'grpc.sock'}"

        def pem(path: Path | None) -> str:
            return path.read_text() if path is not None else ""

        self._server = _frontend.Frontend(
            settings.grpc_target,
            self.upstream,
            settings.max_message_bytes,
            reuse_port=settings.reuse_port,
            tls_cert=pem(settings.tls_cert),
            tls_key=pem(settings.tls_key),
            tls_client_ca=pem(settings.tls_client_ca),
            max_calls=settings.max_concurrent_rpcs,
            max_streams=settings.max_streams_per_connection,
            restricted=restricted.native_rules(restricted.parse(settings.grpc_restricted_protocol)),
            max_request_bytes=settings.max_request_bytes_in_flight,
        )
        self._routed: dict[str, dict[int, OnnxModel]] = {}  # name -> version -> the instance
        self._in_process: InProcess | None = None

    async def beat(self) -> None:
        """Tell the front end, every 100 ms, that this event loop turns: it answers ServerLive
        itself while the beats are recent (a stuck loop still fails the probes)."""
        while True:
            self._server.beat()
            await asyncio.sleep(0.1)

    def collector(self) -> FrontendCollector:
        """Its request-bytes budget, for /metrics."""
        return FrontendCollector(
            lambda: self._server.request_bytes_in_flight,
            lambda: self._server.calls_shed,
            lambda: dict.copy(self._in_process.calls) if self._in_process is not None else {},
        )

    def budget(self) -> SharedBudget:
        """Its request-bytes budget, for the HTTP port to take from too."""
        return SharedBudget(self._server)

    def serve_in_process(self, handler: InProcess) -> None:
        """Have `handler` answer its methods in this process (before `start`)."""
        self._in_process = handler
        self._server.serve_in_process(handler.methods, handler.streams, handler)

    def start(self) -> int:
        """Listen; return the port."""
        try:
            return self._server.start()
        except RuntimeError as err:
            raise SystemExit(f"seqserve: {err} (is another server using the port?)") from None

    def route(self, name: str, models: list[ServedModel]) -> None:
        """Route `name`'s fast-path ModelInfer to exactly these ready versions (the newest is
        the default). A version dropped from the route, or replaced by a reload of the same
        version, keeps its queue until its model's `drain_and_close` closes it."""
        fast = {m.version: m for m in models if isinstance(m, OnnxModel) and m.fast_path}
        routed = self._routed.get(name, {})
        for version in routed.keys() - fast.keys():
            self._server.remove_model(name, version)
        for version, m in fast.items():
            if routed.get(version) is not m:  # new, or a new instance of the version
                m.native_queue = self._attach(m)  # replaces the old one's route
        self._routed[name] = fast
        versions = [m.version for m in models]
        # The newest ready version answers an empty model_version: if that one is not on the
        # fast path, neither is the name without a version.
        newest = max(versions) if versions else -1
        self._server.set_default(name, newest if newest in fast else -1)

    def _attach(self, model: OnnxModel) -> Any:
        inputs, outputs, policy = signature(model, model.policy)
        stats, version = model.stats, str(model.version)
        request_seconds = metrics.REQUEST_SECONDS.labels(model.name, version)
        queue_seconds = metrics.QUEUE_SECONDS.labels(model.name, version)

        def account(
            queue_ns: list[int],
            elements: int,
            input_ns: int,
            infer_ns: int,
            output_ns: int,
            durations_ns: list[int],
        ) -> None:
            stats.record_batch(queue_ns, elements, input_ns, infer_ns, output_ns, durations_ns)
            for ns in queue_ns:
                queue_seconds.observe(ns / 1e9)
            for ns in durations_ns:
                request_seconds.observe(ns / 1e9)

        def fail(kind: str, elapsed_ns: int, detail: str) -> tuple[int, str]:
            request_seconds.observe(elapsed_ns / 1e9)
            if kind == "cancelled":  # nobody is there to read the status
                stats.record_failure(elapsed_ns, FailureReason.CANCELED)
                return grpc.StatusCode.CANCELLED.value[0], "cancelled by the client"
            error = _error(model, kind, elapsed_ns, detail)
            stats.record_failure(elapsed_ns, error.reason)
            code, message = status_for(error)
            return code.value[0], message

        # Refusals at admission are answered in C++ with these fixed statuses (no GIL while
        # shedding load) and folded into the statistics when they are read
        # (`OnnxModel.statistics`).
        full_code, full = status_for(_error(model, "queue_full", 0, ""))
        gone_code, gone = status_for(_error(model, "unloading", 0, ""))
        assert full_code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert gone_code is grpc.StatusCode.UNAVAILABLE
        return self._server.add_model(
            model.name,
            model.version,
            inputs,
            outputs,
            policy,
            model.run_batch,
            account,
            fail,
            queue_full_message=full,
            unloading_message=gone,
            forecast=forecast_spec(model),
        )

    def shutdown(self, grace_s: float) -> None:
        """Refuse new calls, let those in flight finish for up to `grace_s`. Blocks."""
        self._server.shutdown(grace_s)
        self._dir.cleanup()


def _error(model: OnnxModel, kind: str, elapsed_ns: int, detail: str) -> ServingError:
    name = f"model '{model.name}'"
    if kind == "queue_full":
        return QueueFull(
            f"{name}: queue full ({model.policy.max_queue_size} requests); retry after a back-off"
        )
    if kind == "expired":
        return DeadlineExceeded(
            f"{name}: request timed out after {elapsed_ns / 1e6:.1f} ms in the queue"
        )
    if kind == "unloading":
        return ModelNotReady(f"{name} is unloading")
    log.error("%s: inference failed: %s", name, detail)
    return InferenceError(f"{name}: inference failed")
