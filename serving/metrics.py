"""Prometheus metrics: Triton's per-model series, seqserve's own, and the /metrics endpoint.

Triton's `nv_inference_*` series are read from the same `ModelStats` that ModelStatistics
answers from, so the two agree. They are counters with Triton's exact names: prometheus-client
would add `_total` to a counter's sample and TYPE lines, so this module renders them itself and
appends them to prometheus-client's output. Labels are bounded: model, version, reason.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.models.base import ServedModel

log = logging.getLogger(__name__)

# 50 µs .. 10 s
LATENCY_BUCKETS = (
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LABELS = ["model", "version"]  # of every per-model series (failures add "reason")

REQUEST_SECONDS = Histogram(
    "seqserve_request_duration_seconds",
    "Server-side request duration, receipt to response, successful and failed",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_SECONDS = Histogram(
    "seqserve_queue_duration_seconds",
    "Time a request waited in the model's queue",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)

_COUNTERS = {  # Triton name -> (help, value from ModelStats)
    "nv_inference_request_success": (
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    "nv_inference_count": (
        "Number of inferences performed (batch elements)",
        lambda s: s.inference_count,
    ),
    "nv_inference_exec_count": (
        "Number of model executions performed (batches)",
        lambda s: s.execution_count,
    ),
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    "nv_inference_compute_input_duration_us": (
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns // 1000,
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
    "nv_inference_compute_output_duration_us": (
        "Cumulative inference compute output duration in microseconds",
        lambda s: s.compute_output.ns // 1000,
    ),
}


def triton_families(models: list[ServedModel]) -> Iterable[Metric]:
    """Triton's per-model families, with Triton's names, from the models' statistics."""
    stats = [m.statistics() for m in models]
    for name, (doc, value) in _COUNTERS.items():
        metric = Metric(name, doc, "counter")
        for m, s in zip(models, stats, strict=True):
            metric.add_sample(name, {"model": m.name, "version": str(m.version)}, value(s))
        yield metric
    failure = Metric(
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        "counter",
    )
    for m, s in zip(models, stats, strict=True):
        for reason, count in s.failures.items():
            failure.add_sample(
                "nv_inference_request_failure",
                {"model": m.name, "version": str(m.version), "reason": reason.value},
                count,
            )
    yield failure
    yield ModelCollector._gauge(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution",
        models,
        lambda m: m.pending,
    )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: Iterable[Metric]) -> bytes:
    """Prometheus text format 0.0.4, names exactly as given."""
    lines = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {fam.documentation}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for smp in fam.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(smp.labels.items()))
            lines.append(f"{smp.name}{{{labels}}} {float(smp.value)!r}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


class FrontendCollector(Collector):
    """The request-bytes budget of the gRPC and HTTP ports (docs/serving.md, "Memory, worst
    case"), and the calls the native front end's in-process servicers answered (none without
    it)."""

    def __init__(
        self,
        in_flight: Callable[[], int],
        shed: Callable[[], int],
        in_process: Callable[[], Mapping[str, int]],
    ) -> None:
        self._in_flight = in_flight
        self._shed = shed
        self._in_process = in_process

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "seqserve_request_bytes_in_flight",
            "Request bytes the gRPC and HTTP ports count as held, copies included",
            value=self._in_flight(),
        )
        yield CounterMetricFamily(
            "seqserve_requests_shed",
            "Calls ended with RESOURCE_EXHAUSTED while their message "
            "arrived, to keep --max-request-bytes-in-flight",
            value=self._shed(),
        )
        calls = CounterMetricFamily(
            "seqserve_native_in_process_calls",
            "Calls the native front end had this process's servicers "
            "answer, without the hop to the Python server",
            labels=["method"],
        )
        for method, n in sorted(self._in_process().items()):
            calls.add_metric([method], n)
        yield calls


class ModelCollector(Collector):
    """seqserve's per-model series (gauges and histograms), computed at scrape time."""

    def __init__(
        self,
        models: Callable[[], Iterable[ServedModel]],
        ready: Callable[[], Iterable[tuple[str, str, bool]]],
    ) -> None:
        self.models = models
        self._ready = ready

    def collect(self) -> Iterable[Metric]:
        models = list(self.models())
        yield self._gauge(
            "seqserve_queue_size",
            "Requests waiting in the model's queue",
            models,
            lambda m: m.queue_size,
        )
        yield self._gauge(
            "seqserve_queue_capacity",
            "Capacity of the model's queue (0 = unbounded)",
            models,
            lambda m: m.queue_capacity,
        )
        ready = Metric("seqserve_model_ready", "1 when a model version is ready, else 0", "gauge")
        for name, version, is_ready in self._ready():
            ready.add_sample(
                "seqserve_model_ready",
                {"model": name, "version": version},
                1.0 if is_ready else 0.0,
            )
        yield ready
        yield self._batch_histogram(models)
        fast = CounterMetricFamily(
            "seqserve_native_requests",
            "ModelInfer requests the native front end ran itself "
            "(the rest of the model's requests went to the Python server)",
            labels=LABELS,
        )
        for m in models:
            if m.fast_path_requests is not None:
                fast.add_metric([m.name, str(m.version)], m.fast_path_requests)
        yield fast
        yield from self._engine_usage(models)

    @staticmethod
    def _engine_usage(models: list[ServedModel]) -> Iterable[Metric]:
        """CPU, memory and restarts of the models' own processes (the process collector's
        series only cover the server's)."""
        cpu = CounterMetricFamily(
            "seqserve_engine_cpu_seconds", "CPU time of a model's engine process", labels=LABELS
        )
        memory = GaugeMetricFamily(
            "seqserve_engine_resident_memory_bytes",
            "Resident memory of a model's engine process",
            labels=LABELS,
        )
        restarts = CounterMetricFamily(
            "seqserve_engine_restarts",
            "Restarts of a model's engine process, by reason (exited, stalled)",
            labels=[*LABELS, "reason"],
        )
        for m in models:
            usage = process_usage(m.engine_pid) if m.engine_pid else None
            if usage is not None:
                cpu.add_metric([m.name, str(m.version)], usage[0])
                memory.add_metric([m.name, str(m.version)], usage[1])
            for reason, count in (m.engine_restarts or {}).items():
                restarts.add_metric([m.name, str(m.version), reason], count)
        yield cpu
        yield memory
        yield restarts

    @staticmethod
    def _gauge(
        name: str, doc: str, models: list[ServedModel], value: Callable[[ServedModel], float]
    ) -> Metric:
        metric = Metric(name, doc, "gauge")
        for m in models:
            metric.add_sample(name, {"model": m.name, "version": str(m.version)}, value(m))
        return metric

    @staticmethod
    def _batch_histogram(models: list[ServedModel]) -> Metric:
        name = "seqserve_batch_size"
        metric = Metric(name, "Batch elements per model execution", "histogram")
        for m in models:
            labels = {"model": m.name, "version": str(m.version)}
            batches = m.statistics().batches
            sizes = {size: b.compute_infer.count for size, b in batches.items()}
            for bound in BATCH_BUCKETS:
                metric.add_sample(
                    name + "_bucket",
                    {**labels, "le": str(float(bound))},
                    sum(c for s, c in sizes.items() if s <= bound),
                )
            total = sum(sizes.values())
            metric.add_sample(name + "_bucket", {**labels, "le": "+Inf"}, total)
            metric.add_sample(name + "_count", labels, total)
            metric.add_sample(name + "_sum", labels, sum(s * c for s, c in sizes.items()))
        return metric


def process_usage(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, resident bytes) of a process, read from /proc (Linux); None when it is
    gone or /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # from field 3 (state) on: utime is field 14
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, float(resident_pages * os.sysconf("SC_PAGE_SIZE"))


# Loaded instances per (model, version). A version reloaded in place (poll mode, same number)
# has two instances for a while, which share the histograms' children: the retired one's
# `forget` must not remove what the new one still fills.
_instances: dict[tuple[str, str], int] = {}
_instances_lock = threading.Lock()


def announce(model: ServedModel) -> None:
    """Create a loaded model's histogram series at zero, so that its latency panels and rules
    see the model (at rate 0) before its first request, as the nv_inference_* series do."""
    key = (model.name, str(model.version))
    with _instances_lock:
        _instances[key] = _instances.get(key, 0) + 1
    for histogram in (REQUEST_SECONDS, QUEUE_SECONDS):
        histogram.labels(*key)


def forget(model: ServedModel) -> None:
    """Drop an unloaded model's histogram children once no instance of its version is left,
    so /metrics stops listing it."""
    key = (model.name, str(model.version))
    with _instances_lock:
        left = _instances.get(key, 0) - 1
        if left > 0:
            _instances[key] = left
            return
        _instances.pop(key, None)
    for histogram in (REQUEST_SECONDS, QUEUE_SECONDS):
        try:
            histogram.remove(*key)
        except KeyError:
            pass


def exposition(models: Callable[[], Iterable[ServedModel]]) -> Callable[[], bytes]:
    """One server's /metrics body: prometheus-client's registry plus Triton's series."""
    return lambda: generate_latest(REGISTRY) + render(triton_families(list(models())))


class MetricsEndpoint:
    """A /metrics HTTP server, on its own port and thread, answering with `body()`; `binary`
    adds paths answered with bytes (a worker's loopback endpoint: `serving.peers`)."""

    def __init__(
        self,
        address: str,
        port: int,
        body: Callable[[], bytes],
        binary: Mapping[str, Callable[[], bytes]] | None = None,
    ) -> None:
        routes = {"/": (CONTENT_TYPE_LATEST, body), "/metrics": (CONTENT_TYPE_LATEST, body)}
        routes |= {path: ("application/octet-stream", f) for path, f in (binary or {}).items()}

        def app(environ: dict, start_response: Callable) -> list[bytes]:
            route = routes.get(environ.get("PATH_INFO", "/"))
            if route is None:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: try /metrics\n"]
            content_type, make = route
            data = make()
            start_response(
                "200 OK", [("Content-Type", content_type), ("Content-Length", str(len(data)))]
            )
            return [data]

        self._server = make_server(
            address, port, app, ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.address, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="metrics"
        )
        self._thread.start()
        log.info("metrics at http://%s:%d/metrics", self.address, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def register(collector: Collector) -> Callable[[], None]:
    """Register a collector; return its unregister function."""
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)
