"""`seqserve serve --workers N`: N server processes behind one gRPC port and one /metrics.

Python serves gRPC on one core: a server's event loop, not onnxruntime, is what saturates
first with small models. Workers are whole servers (`serving.server.serve`), each with its own
copy of the models, started with the `spawn` method. They share the gRPC port through
SO_REUSEPORT: the kernel spreads new connections over them, so a client needs several
connections (several clients, or a channel per worker) to reach more than one worker.

The supervisor (this process):
- reserves the port first (a bound, not listening, SO_REUSEPORT socket held for its whole life),
  so a second server started by mistake fails at once instead of sharing the traffic; port 0
  becomes a free port that every worker then uses;
- serves /metrics by scraping every worker's loopback endpoint and merging the series
  (`serving.metrics_merge`): one server to Prometheus, plus `seqserve_workers`;
- restarts a worker that dies (with a back-off when it dies young), but stops everything and
  exits 1 when a worker dies before it ever served: that is a configuration error (a TLS file
  missing, a port taken), which restarts would only repeat; on SIGTERM or SIGINT it passes
  SIGTERM on, waits for the workers' drains and exits 0 when they all exited 0.

Per-process state is summed too: the worker that takes a ModelStatistics call adds its
siblings' figures (`serving.peers`), so the answer agrees with /metrics. Explicit model control
is refused (a Load would reach one worker).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import tempfile
import threading
import time
import urllib.request
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path

from serving.metrics import MetricsEndpoint
from serving.metrics_merge import merge
from serving.peers import read_status
from serving.settings import Settings

log = logging.getLogger("seqserve.supervisor")

SCRAPE_TIMEOUT_S = 5.0
YOUNG_S = 10.0  # a worker that dies younger than this is restarted after a growing back-off
MAX_BACKOFF_S = 30.0


def reserve_port(address: str, port: int) -> socket.socket:
    """Bind (not listen) address:port with SO_REUSEPORT; the workers join the same group."""
    family = socket.AF_INET6 if ":" in address.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((address.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise SystemExit(
            f"seqserve: cannot listen on {address}:{port}: {err} "
            "(is another server using the port?)"
        ) from err
    return sock


def worker_main(settings: Settings, index: int) -> None:
    """A worker's entry point (in the spawned process)."""
    import asyncio

    from serving.server import serve

    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s",
    )
    if not asyncio.run(serve(settings)):  # a model did not drain: as serving.server.main
        logging.shutdown()
        os._exit(1)


class _Worker:
    def __init__(self, index: int, status_file: Path) -> None:
        self.index, self.status_file = index, status_file
        self.process: BaseProcess | None = None
        self.started = 0.0
        self.backoff = 0.0
        self.restart_at: float | None = None  # set while a dead worker waits for its restart
        self.served = False  # has this worker ever reported ready (in any of its lives)?

    def metrics_url(self) -> str | None:
        """The worker's loopback /metrics, once it has written its status file."""
        status = read_status(self.status_file)
        if status is None or self.process is None or status["pid"] != self.process.pid:
            return None  # not serving yet, or an earlier life's file
        return f"http://127.0.0.1:{status['port']}/metrics"


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._reservations = [reserve_port(settings.grpc_address, settings.grpc_port)]
        self.port = self._reservations[0].getsockname()[1]
        self.http_port = 0  # REST disabled, or the port the workers share
        if settings.http_port:
            try:
                self._reservations.append(reserve_port(settings.http_address, settings.http_port))
            except SystemExit:
                self._release()
                raise
            self.http_port = self._reservations[-1].getsockname()[1]
        self._folder = tempfile.TemporaryDirectory(prefix="seqserve-workers-")
        self._workers = [
            _Worker(i, Path(self._folder.name) / f"worker-{i}.json")
            for i in range(settings.workers)
        ]
        self._context = mp.get_context("spawn")
        self._stopping = threading.Event()
        self._failed = False
        self.metrics: MetricsEndpoint | None = None

    def _worker_settings(self, worker: _Worker) -> Settings:
        return replace(
            self.settings,
            grpc_port=self.port,
            http_port=self.http_port,
            workers=1,
            reuse_port=True,
            worker_status_file=worker.status_file,
        )

    def _start(self, worker: _Worker) -> None:
        worker.status_file.unlink(missing_ok=True)
        process = self._context.Process(
            target=worker_main,
            name=f"seqserve-worker-{worker.index}",
            args=(self._worker_settings(worker), worker.index),
        )
        process.start()
        worker.process, worker.started = process, time.monotonic()
        log.info("worker %d started (pid %d)", worker.index, process.pid)

    def _scrape(self) -> bytes:
        texts = []
        for worker in self._workers:
            url = worker.metrics_url()
            if url is None:
                continue
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                    texts.append(response.read().decode())
            except OSError as err:
                log.warning("worker %d: /metrics did not answer: %s", worker.index, err)
        own = (
            "# HELP seqserve_workers Worker processes serving (ready, and answering this "
            f"scrape)\n# TYPE seqserve_workers gauge\nseqserve_workers {len(texts)}.0\n"
        )
        return (merge(texts) + own).encode()

    def _check(self, worker: _Worker) -> None:
        """Restart a worker that exited, unless the server is stopping."""
        now = time.monotonic()
        process = worker.process
        if not worker.served and worker.metrics_url() is not None:
            worker.served = True
        if process is not None and not process.is_alive() and not worker.served:
            log.error(
                "worker %d (pid %d) exited with %s before it ever served: stopping (its "
                "log above says why)",
                worker.index,
                process.pid,
                process.exitcode,
            )
            self._failed = True
            self._stopping.set()
            return
        if process is not None and not process.is_alive():
            age = now - worker.started
            worker.backoff = (
                min(MAX_BACKOFF_S, max(1.0, 2 * worker.backoff)) if age < YOUNG_S else 0.0
            )
            log.error(
                "worker %d (pid %d) exited with %s after %.1fs; restarting in %.0fs",
                worker.index,
                process.pid,
                process.exitcode,
                age,
                worker.backoff,
            )
            worker.process, worker.restart_at = None, now + worker.backoff
        if worker.restart_at is not None and now >= worker.restart_at:
            worker.restart_at = None
            self._start(worker)

    def run(self) -> int:
        def on_signal(signum: int, _frame: object) -> None:
            if self._stopping.is_set():
                log.warning("%s: already stopping", signal.Signals(signum).name)
            self._stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        log.info("%d workers on %s:%d", len(self._workers), self.settings.grpc_address, self.port)
        if self.settings.metrics_port:
            try:
                self.metrics = MetricsEndpoint(
                    self.settings.metrics_address, self.settings.metrics_port, self._scrape
                )
            except OSError as err:
                self._release()
                raise SystemExit(
                    f"seqserve: cannot serve metrics on "
                    f"{self.settings.metrics_address}:"
                    f"{self.settings.metrics_port}: {err}"
                ) from None
        for worker in self._workers:
            self._start(worker)
        try:
            while not self._stopping.wait(0.5):
                for worker in self._workers:
                    self._check(worker)
        finally:
            code = self._stop()
        return 1 if self._failed else code

    def _release(self) -> None:
        for reservation in self._reservations:
            reservation.close()

    def _stop(self) -> int:
        """SIGTERM to every worker, wait for their drains (grace period + 10 s), then kill."""
        alive = [w.process for w in self._workers if w.process is not None]
        for process in alive:
            if process.is_alive() and process.pid is not None:
                process.terminate()
        deadline = time.monotonic() + self.settings.grace_period_secs + 10.0
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %s did not stop in time: killed", process.pid)
                process.kill()
                process.join()
        if self.metrics is not None:
            self.metrics.close()
        self._release()
        self._folder.cleanup()
        codes = [p.exitcode for p in alive]
        log.info("workers stopped (exit codes %s)", codes)
        return 0 if all(c == 0 for c in codes) else 1


def main(settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s [supervisor] %(name)s: %(message)s",
    )
    return Supervisor(settings).run()
