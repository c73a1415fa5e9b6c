"""Prometheus metrics: module-level collectors and the /metrics HTTP endpoint.

The default registry already carries the process collector (`process_cpu_seconds_total`,
`process_resident_memory_bytes`, ...). Labels are bounded: model, version, reason.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import Gauge, start_http_server

log = logging.getLogger(__name__)

MODEL_READY = Gauge(
    "seqserve_model_ready", "1 when a model version is ready to serve, else 0",
    ["model", "version"],
)


class MetricsEndpoint:
    """The /metrics HTTP server, on its own port and thread."""

    def __init__(self, address: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=address)
        self.address, self.port = self._server.server_address[:2]
        log.info("metrics at http://%s:%d/metrics", self.address, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
