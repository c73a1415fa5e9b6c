"""KServe V2 REST (HTTP/JSON) beside gRPC: Triton's HTTP endpoints over the same dataplane.

    GET  /v2/health/live | /v2/health/ready           200, or 400 when not (as Triton)
    GET  /v2                                           server metadata
    GET  /v2/models/M[/versions/V]                     model metadata
    GET  /v2/models/M[/versions/V]/ready               200, or 400
    POST /v2/models/M[/versions/V]/infer               JSON tensors, or Triton's binary extension
    GET  /v2/models/M[/versions/V]/config              the model's config
    GET  /v2/models[/M[/versions/V]]/stats             Triton's statistics
    POST /v2/repository/index                          [{"name", "version", "state", "reason"}]
    POST /v2/repository/models/M/load | unload         {"parameters": {"config": "..."}} for load

aiohttp serves it on the event loop the gRPC servicers use: one dataplane, one accounting of
every request, whichever protocol brought it. The statistics and repository endpoints call
the V2 servicer's own methods, so their rules (sums over `--workers`, Load's parameters) are
written once. An error answers with Triton's `{"error": "..."}` and the HTTP status of its
gRPC code (`HTTP_STATUS`). Limits: a body larger than `--max-message-bytes` is refused (413),
more than `--max-concurrent-rpcs` calls in progress are refused (429, health exempt), and
`--http-restricted-api` keeps API groups to callers with a header (403).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from core.errors import InvalidInput, MessageTooLarge, PermissionDenied, QueueFull
from protos.inference import grpc_service_pb2 as pb
from serving import restricted
from serving.dataplane import DataPlane
from serving.interceptors import failure_status
from serving.models.base import ServedModel
from serving.peers import Peers
from serving.rest import codec
from serving.rest.budget import Budget
from serving.rest.messages import to_json
from serving.servicers import repository
from serving.settings import Settings

log = logging.getLogger(__name__)

# gRPC status -> HTTP status: Triton's HTTP endpoint's mapping of its error codes (INVALID_ARG
# 400, NOT_FOUND 404, UNAVAILABLE 503, UNSUPPORTED 501, INTERNAL 500), and for the codes
# seqserve adds: a full queue or a busy server 429, a deadline 504, a missing key 403.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.INTERNAL: 500,
}
# What a request holds while it is served, per byte of its body beyond the body as received
# (docs/serving.md, "Memory, worst case"). Measured as the server's peak RSS growth for one
# request sent alone, its answer included: binary tensors 6.0x (a 48 MiB BYTES element, 7.0x
# sent as a JSON string); JSON numbers, which become Python objects, then arrays, then JSON
# again, 12.7x (60 MiB of "0.25,") to 28.2x (24 MiB of "0,").
BINARY_COPIES = 6
JSON_COPIES = 31
HELD = "seqserve.bytes_held"  # a request's share of the budget, in its aiohttp mapping
MODEL = "/v2/models/{model}"
VERSIONED = "/v2/models/{model}/versions/{version}"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: BaseException, where: str) -> web.Response:
    if isinstance(exc, MessageTooLarge):
        status, message = 413, str(exc)
    else:
        code, message = failure_status(exc, where)
        status = HTTP_STATUS.get(code, 500)
    return _json({"error": message}, status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such path, wrong method) in Triton's error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"error": f"{request.method} {request.path}: {exc.reason}"}, exc.status)


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(doc, separators=(",", ":")), status=status, content_type="application/json"
    )


class RestServer:
    def __init__(
        self,
        settings: Settings,
        dataplane: DataPlane,
        peers: Peers | None,
        budget: Budget,
    ) -> None:
        """`peers`: the sibling workers under --workers N (statistics sum theirs), else None;
        `budget`: the request-bytes budget the gRPC port takes from too."""
        self._settings = settings
        self._dp = dataplane
        self._peers = peers
        self._rules = restricted.groups(settings.http_restricted_api, "--http-restricted-api", "")
        self._cap = settings.max_concurrent_rpcs
        self._in_progress = 0
        self._budget = budget
        self._runner: web.AppRunner | None = None
        self.port = 0
        app = web.Application(middlewares=[json_errors])  # _body enforces the size cap
        get, post = app.router.add_get, app.router.add_post
        get("/v2/health/live", self._endpoint("health", self.live))
        get("/v2/health/ready", self._endpoint("health", self.ready))
        get("/v2", self._endpoint("metadata", self.server_metadata))
        get("/v2/models/stats", self._endpoint("statistics", self.statistics))
        for path in (MODEL, VERSIONED):
            get(path, self._endpoint("metadata", self.model_metadata))
            get(path + "/ready", self._endpoint("health", self.model_ready))
            post(path + "/infer", self._endpoint("inference", self.infer))
            get(path + "/config", self._endpoint("model-config", self.model_config))
            get(path + "/stats", self._endpoint("statistics", self.statistics))
        post("/v2/repository/index", self._endpoint("model-repository", self.index))
        post("/v2/repository/models/{model}/load", self._endpoint("model-repository", self.load))
        post(
            "/v2/repository/models/{model}/unload", self._endpoint("model-repository", self.unload)
        )
        self.app = app

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self._settings
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            s.http_address.strip("[]"),
            s.http_port,
            reuse_port=s.reuse_port or None,
        )
        try:
            await site.start()
        except OSError as err:
            await self._runner.cleanup()
            raise SystemExit(
                f"seqserve: cannot serve HTTP on {s.http_address}:{s.http_port}: {err} "
                "(is another server using the port?)"
            ) from None
        self.port = self._runner.addresses[0][1]

    async def stop(self, timeout: float) -> None:
        """Stop accepting, let calls in progress finish for up to `timeout` seconds (what is
        left of the grace period), close."""
        if self._runner is not None:
            self._runner._shutdown_timeout = timeout  # what cleanup() waits for handlers
            await self._runner.cleanup()

    # -- the gate every endpoint passes ------------------------------------------------------

    def _endpoint(self, group: str, handler: Handler) -> Handler:
        rule = self._rules.get(group)
        capped = group != "health" and self._cap > 0

        async def endpoint(request: web.Request) -> web.StreamResponse:
            try:
                if rule is not None:
                    sent = request.headers.get(rule.header)  # header names: any case
                    if not rule.allows([] if sent is None else [(rule.header, sent)]):
                        raise PermissionDenied(rule.message)
                if capped and self._in_progress >= self._cap:
                    raise QueueFull(
                        f"server busy: {self._in_progress} calls in progress "
                        "(--max-concurrent-rpcs); retry after a back-off"
                    )
                self._in_progress += 1
                try:
                    return await handler(request)
                finally:
                    self._in_progress -= 1
                    self._budget.give(request.get(HELD, 0))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                return error_response(exc, f"{request.method} {request.path}")

        return endpoint

    async def _body(self, request: web.Request) -> bytes:
        """The body, its bytes taken from the budget as they are read, then its copies."""
        cap = self._settings.max_message_bytes
        too_large = MessageTooLarge(f"the request is larger than {cap} bytes (--max-message-bytes)")
        if (request.content_length or 0) > cap:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise too_large
            self._hold(request, len(chunk))
            chunks.append(chunk)
        length = request.headers.get(codec.HEADER_LENGTH, "")
        json_part = min(int(length), size) if length.isdigit() else size
        self._hold(request, JSON_COPIES * json_part + BINARY_COPIES * (size - json_part))
        return b"".join(chunks)

    def _hold(self, request: web.Request, n: int) -> None:
        mine = request.get(HELD, 0)
        if not self._budget.take(n, mine):
            raise QueueFull(
                f"server busy: requests hold {self._budget.held} bytes "
                f"(--max-request-bytes-in-flight {self._budget.limit}); retry after a back-off"
            )
        request[HELD] = mine + n

    async def _doc(self, request: web.Request) -> dict[str, Any]:
        body = await self._body(request)
        if not body.strip():
            return {}
        try:
            doc = json.loads(body)
        except ValueError as err:
            raise InvalidInput(f"the request is not valid JSON: {err}") from None
        if not isinstance(doc, dict):
            raise InvalidInput("the request: expected a JSON object")
        return doc

    # -- health and metadata -----------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._dp.server_live() else 400)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._dp.server_ready() else 400)

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        return web.Response(status=200 if self._dp.model_ready(name, version) else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        meta = self._dp.server_metadata()
        return _json({"name": meta.name, "version": meta.version, "extensions": meta.extensions})

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self._dp.model(request.match_info["model"], request.match_info.get("version", ""))

        def tensors(specs: dict) -> list[dict[str, Any]]:
            return [
                {"name": s.name, "datatype": s.datatype, "shape": s.shape(model.batching)}
                for s in specs.values()
            ]

        return _json(
            {
                "name": model.name,
                "versions": self._dp.model_versions(model.name),
                "platform": model.config.platform or model.config.backend,
                "inputs": tensors(model.inputs),
                "outputs": tensors(model.outputs),
            }
        )

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        return _json(to_json(self._dp.model_config(name, version)))

    # -- inference ---------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        start = time.perf_counter_ns()
        decoded: list[codec.Decoded] = []

        async def call(model: ServedModel) -> dict:
            body = await self._body(request)  # read and decoded here: its failures count
            decoded.append(codec.decode(body, request.headers.get(codec.HEADER_LENGTH), model))
            return await model.infer(decoded[0].request)

        model, outputs = await self._dp.run(
            request.match_info["model"], request.match_info.get("version", ""), call, start
        )
        body, json_length = codec.encode(model, decoded[0].request.id, outputs, decoded[0])
        if len(body) > self._settings.max_message_bytes:  # as gRPC's send limit
            raise MessageTooLarge(
                f"the response is {len(body)} bytes, more than --max-message-bytes "
                f"{self._settings.max_message_bytes}"
            )
        if json_length is None:
            return web.Response(body=body, content_type="application/json")
        return web.Response(
            body=body,
            content_type="application/octet-stream",
            headers={codec.HEADER_LENGTH: str(json_length)},
        )

    # -- statistics and the repository (the V2 rules the gRPC servicer follows too) ----------

    async def statistics(self, request: web.Request) -> web.Response:
        reply = await repository.model_statistics(
            self._dp,
            self._peers,
            pb.ModelStatisticsRequest(
                name=request.match_info.get("model", ""),
                version=request.match_info.get("version", ""),
            ),
        )
        return _json(to_json(reply))

    async def index(self, request: web.Request) -> web.Response:
        doc = await self._doc(request)
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput("ready: expected true or false")
        reply = repository.repository_index(self._dp, pb.RepositoryIndexRequest(ready=ready))
        return _json([to_json(m) for m in reply.models])

    async def load(self, request: web.Request) -> web.Response:
        doc = await self._doc(request)
        params = doc.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput("parameters: expected a JSON object")
        load = pb.RepositoryModelLoadRequest(model_name=request.match_info["model"])
        for key, value in params.items():
            if not isinstance(value, str):
                raise InvalidInput(f"parameter '{key}': expected a string")
            try:
                load.parameters[key].string_param = value
            except UnicodeEncodeError:
                raise InvalidInput(f"parameter {key!a}: not valid Unicode text") from None
        await repository.load_model(self._dp, load)
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        await self._doc(request)  # a body, if any, must be JSON; its parameters change nothing
        unload = pb.RepositoryModelUnloadRequest(model_name=request.match_info["model"])
        await repository.unload_model(self._dp, unload)
        return web.Response(status=200)
