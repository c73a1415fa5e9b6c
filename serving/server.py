"""The server's lifecycle: build the aio gRPC server, serve, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from importlib import metadata

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from protos.inference import grpc_service_pb2_grpc
from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc
from protos.seqserve.translate.v1 import translate_service_pb2_grpc
from serving import metrics, restricted
from serving.allocator import give_back_large_buffers
from serving.budget import RequestBudget
from serving.dataplane import DataPlane
from serving.interceptors import (
    ExceptionToStatusInterceptor,
    RequestBytesInterceptor,
    RestrictedProtocolInterceptor,
)
from serving.metrics import FrontendCollector, MetricsEndpoint, ModelCollector
from serving.native.frontend import NativeFrontend
from serving.native.frontend import wanted as native_wanted
from serving.native.in_process import Collected, InProcess
from serving.peers import STATISTICS_PATH, Peers, write_status
from serving.repository import ModelRepository, State
from serving.rest.server import RestServer
from serving.runtime_check import check_single_runtime
from serving.servicers.forecast import SERVICE_NAME as FORECAST_SERVICE
from serving.servicers.forecast import ForecasterServicer
from serving.servicers.inference import SERVICE_NAME as INFERENCE_SERVICE
from serving.servicers.inference import InferenceServicer
from serving.servicers.statistics import statistics_response
from serving.servicers.translate import SERVICE_NAME as TRANSLATE_SERVICE
from serving.servicers.translate import TranslatorServicer
from serving.settings import ModelControlMode, Settings

log = logging.getLogger("seqserve")

SERVICES = (INFERENCE_SERVICE, FORECAST_SERVICE, TRANSLATE_SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STATISTICS_TIMEOUT_S = 5.0
MODEL_DRAIN_MIN_S = 5.0  # the models' drain gets at least this, whatever the RPCs took


def _version() -> str:
    try:
        return metadata.version("seqserve")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    chain = [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
    if settings.tls_client_ca is None:
        return grpc.ssl_server_credentials(chain)
    return grpc.ssl_server_credentials(
        chain,
        root_certificates=settings.tls_client_ca.read_bytes(),
        require_client_auth=True,
    )


class Server:
    """One seqserve server: gRPC (V2 + health + reflection) and the metrics endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # With the native front end, this process's grpc.aio server sits behind it on a
        # private socket and answers what the C++ server forwards.
        try:
            self.native = NativeFrontend(settings) if native_wanted(settings) else None
        except OSError as err:
            raise SystemExit(f"seqserve: cannot read a TLS file: {err}") from None
        self.repository = ModelRepository(
            settings.model_repository, settings, on_change=self._model_changed
        )
        self.dataplane = DataPlane(self.repository, _version(), settings.model_control_mode)
        self.health = health.aio.HealthServicer()
        self._background: set[asyncio.Task] = set()
        collectors = [ModelCollector(self.repository.ready_models, self._ready_rows)]
        # The native front end keeps the request-bytes budget of both ports; without it, the
        # Python front end keeps one for its gRPC port (serving/budget.py).
        self.budget: RequestBudget | None = None
        if self.native is not None:
            collectors.append(self.native.collector())
        else:
            self.budget = budget = RequestBudget(
                settings.max_request_bytes_in_flight, settings.max_message_bytes
            )
            collectors.append(FrontendCollector(lambda: budget.held, lambda: budget.shed, dict))
        unregister = [metrics.register(c) for c in collectors]
        self._unregister = lambda: [u() for u in unregister]
        peers = Peers(settings.worker_status_file) if settings.worker_status_file else None
        limit = settings.max_message_bytes
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", int(settings.reuse_port)),  # workers only
        ]
        if settings.max_streams_per_connection:
            options.append(("grpc.max_concurrent_streams", settings.max_streams_per_connection))
        # With the Python front end's budget, requests are read under it (serving/budget.py),
        # in flow-control windows that do not widen by themselves.
        reading = (
            [RequestBytesInterceptor(self.budget)] if self.budget and self.budget.limit else []
        )
        if reading:
            options.append(("grpc.http2.bdp_probe", 0))
        rules = restricted.parse(settings.grpc_restricted_protocol)
        self.grpc = grpc.aio.server(
            interceptors=[
                ExceptionToStatusInterceptor(),
                RestrictedProtocolInterceptor(rules),
                *reading,
            ],
            options=options,
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        )
        # Behind the native front end the calls of these servicers skip the hop to self.grpc:
        # the front end hands them to the same objects in this process (in_process.py).
        self._in_process = Collected()
        inference = InferenceServicer(self.dataplane, peers)
        forecaster = ForecasterServicer(self.dataplane)
        translator = TranslatorServicer(self.dataplane)
        reflecting = reflection.aio.ReflectionServicer(
            (
                *SERVICES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            )
        )
        for server in (self.grpc, self._in_process):
            grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
            forecast_service_pb2_grpc.add_ForecasterServicer_to_server(forecaster, server)
            translate_service_pb2_grpc.add_TranslatorServicer_to_server(translator, server)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflecting, server)
        self.rest = (
            RestServer(
                settings,
                self.dataplane,
                peers,
                self.native.budget() if self.native is not None else self.budget,
            )
            if settings.http_port
            else None
        )
        self.port = 0  # known once start() has bound it
        self.metrics: MetricsEndpoint | None = None

    async def _bind(self) -> None:
        try:
            credentials = _credentials(self.settings)
        except OSError as err:
            await self.grpc.stop(None)
            self._unregister()
            raise SystemExit(f"seqserve: cannot read a TLS file: {err}") from None
        target = self.settings.grpc_target
        if self.native is not None:  # TLS, if any, is the front end's
            target, credentials = self.native.upstream, None
        try:
            self.port = (
                self.grpc.add_secure_port(target, credentials)
                if credentials
                else self.grpc.add_insecure_port(target)
            )
        except RuntimeError as err:
            await self.grpc.stop(None)  # else grpc's teardown at exit garbles the message
            self._unregister()
            raise SystemExit(
                f"seqserve: cannot listen on {target}: {err} (is another server using the port?)"
            ) from None

    def _ready_rows(self) -> list[tuple[str, str, bool]]:
        return [
            (name, version, state is State.READY)  # no disk access per scrape
            for name, version, state, _ in self.repository.index(scan=False)
            if version
        ]

    def _model_changed(self, name: str) -> None:
        """Per-model health: the model name is a grpc.health.v1 service name. With the native
        front end, its fast path follows the versions that serve."""
        if self.native is not None:
            self.native.route(
                name, [self.repository.get(name, str(v)) for v in self.repository.versions(name)]
            )
        status = SERVING if self.repository.is_ready(name) else NOT_SERVING
        task = asyncio.get_running_loop().create_task(self.health.set(name, status))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load_initial(self) -> None:
        mode = self.settings.model_control_mode
        if mode is ModelControlMode.EXPLICIT:
            names = list(self.settings.load_models)
            await self.repository.load_all(None if "*" in names else names)
        else:
            await self.repository.load_all()
        for name, version, state, reason in self.repository.index():
            if state is not State.READY:
                log.error("model '%s' %s: %s (%s)", name, version or "-", state.value, reason)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.repository.poll_once()
            except Exception:
                log.exception("repository poll failed")

    async def start(self) -> None:
        """Alone, listen at once (health says NOT_SERVING while models load). A supervisor's
        worker binds only once its models are loaded: the kernel hands a SO_REUSEPORT socket
        connections as soon as it is bound, and they must reach a worker that can serve."""
        worker = self.settings.worker_status_file is not None
        if not worker:
            await self._bind()
            if self.settings.metrics_port:
                try:
                    self.metrics = MetricsEndpoint(
                        self.settings.metrics_address,
                        self.settings.metrics_port,
                        metrics.exposition(self.repository.ready_models),
                    )
                except OSError as err:
                    await self.grpc.stop(None)
                    self._unregister()
                    raise SystemExit(
                        f"seqserve: cannot serve metrics on "
                        f"{self.settings.metrics_address}:"
                        f"{self.settings.metrics_port}: {err}"
                    ) from None
        # grpc's HealthServicer starts out SERVING: say NOT_SERVING until the models are loaded.
        for service in ("", *SERVICES):
            await self.health.set(service, NOT_SERVING)
        if not worker:
            await self._listen()
        await self._load_initial()
        if self.settings.model_control_mode is ModelControlMode.POLL:
            task = asyncio.get_running_loop().create_task(self._poll())
            self._background.add(task)
        self.dataplane.set_ready(True)
        for service in ("", *SERVICES):
            await self.health.set(service, SERVING)
        if worker:
            await self._bind()
            await self._listen()
            self._report_to_supervisor()
        log.info("ready")

    async def _listen(self) -> None:
        await self.grpc.start()
        if self.rest is not None:
            try:
                await self.rest.start()
            except SystemExit:
                await self.grpc.stop(None)
                self._unregister()
                raise
            log.info("HTTP (KServe V2 REST) on %s:%d", self.settings.http_address, self.rest.port)
        if self.native is not None:
            self.native.serve_in_process(
                InProcess(asyncio.get_running_loop(), self._in_process.handlers)
            )
            try:
                self.port = self.native.start()
            except SystemExit:
                await self.grpc.stop(None)
                self._unregister()
                raise
            task = asyncio.get_running_loop().create_task(self.native.beat())
            self._background.add(task)
        log.info(
            "gRPC on %s:%d (%s, %s front end)",
            self.settings.grpc_address,
            self.port,
            "TLS" if self.settings.tls_cert else "plaintext",
            "native" if self.native is not None else "Python",
        )

    def _report_to_supervisor(self) -> None:
        """Serve /metrics and /statistics on a loopback port and say which in the status
        file: the supervisor counts this worker as serving from then on and scrapes it, and
        the sibling workers add its statistics to theirs."""
        loop = asyncio.get_running_loop()

        def statistics() -> bytes:  # ModelStats change on the event loop: read them there
            return asyncio.run_coroutine_threadsafe(self._statistics(), loop).result(
                timeout=STATISTICS_TIMEOUT_S
            )

        self.metrics = MetricsEndpoint(
            "127.0.0.1",
            0,
            metrics.exposition(self.repository.ready_models),
            binary={STATISTICS_PATH: statistics},
        )
        assert self.settings.worker_status_file is not None
        write_status(self.settings.worker_status_file, os.getpid(), self.metrics.port)

    async def _statistics(self) -> bytes:
        return statistics_response(self.dataplane.statistics()).SerializeToString()

    async def stop(self) -> bool:
        """Drain: health goes NOT_SERVING, new calls are refused, in-flight calls finish within
        the grace period, then the models drain in what is left of it (at least
        MODEL_DRAIN_MIN_S). False when they did not: they were killed."""
        grace = self.settings.grace_period_secs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        log.info("draining (grace period %.1fs)", grace)
        self.dataplane.start_draining()
        await self.health.enter_graceful_shutdown()
        if self.native is not None:  # first: the calls it forwards need the server behind it
            await asyncio.to_thread(self.native.shutdown, grace)
        left = max(deadline - loop.time(), 0.0)
        await asyncio.gather(
            self.grpc.stop(left), *([self.rest.stop(left)] if self.rest is not None else [])
        )
        for task in list(self._background):
            task.cancel()
        left = max(deadline - loop.time(), MODEL_DRAIN_MIN_S)
        drained = True
        try:
            await asyncio.wait_for(self.repository.close(), left)
        except TimeoutError:
            log.error("models did not drain in %.1f s: stopping them", left)
            self.repository.kill()
            drained = False
        if self.metrics is not None:
            self.metrics.close()
        self._unregister()
        log.info("stopped")
        return drained


async def serve(settings: Settings) -> bool:
    """Run until SIGTERM or SIGINT, then drain and return whether the models drained in
    time. Repeated signals during the drain are logged and ignored (an orchestrator's SIGKILL
    ends a drain that takes too long)."""
    give_back_large_buffers()
    runtime = check_single_runtime()
    log.info("seqserve %s with %s", _version(), runtime)
    server = Server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s: already draining", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await server.start()
    try:
        await stop.wait()
    finally:
        drained = await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)  # until exit: the drain is done
    return drained


def main(settings: Settings) -> int:
    if settings.workers > 1:
        from serving.supervisor import main as supervise

        return supervise(settings)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not asyncio.run(serve(settings)):
        # A model did not drain (an inference thread stuck in onnxruntime, say): exit now,
        # rather than wait for its threads at interpreter exit.
        logging.shutdown()
        os._exit(1)
    return 0
