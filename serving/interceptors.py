"""Maps the typed errors of `core.errors` to gRPC status codes, in one place.

Servicers never call `context.abort` themselves: they raise, and this interceptor turns the
exception into a status. Anything that is not a `ServingError` becomes INTERNAL with a generic
message, and its traceback is logged.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from core import errors
from serving.budget import RequestBudget
from serving.restricted import GROUPS, Rule

log = logging.getLogger(__name__)

STATUS: dict[type[errors.ServingError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.ServerNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.EngineFailed: grpc.StatusCode.UNAVAILABLE,
    errors.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.MessageTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.InferenceError: grpc.StatusCode.INTERNAL,
}

INTERNAL_MESSAGE = "Internal server error"
HEALTH = frozenset(GROUPS["health"])


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception raised while serving."""
    if isinstance(exc, errors.ServingError):
        for cls in type(exc).__mro__:
            if cls in STATUS:
                code = STATUS[cls]
                if code is grpc.StatusCode.INTERNAL:
                    return code, INTERNAL_MESSAGE
                return code, str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def failure_status(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status for `exc`, logged when it is INTERNAL.

    A failed request must not outlive its call. grpc.aio's `context.abort` raises an AbortError
    that its call state keeps, and whose traceback keeps the frames it passed through: a
    reference cycle, freed only when Python's cyclic garbage collector next runs, which kept
    each failed request's payload (up to the message cap) alive for a dozen calls. So the
    wrappers below drop their reference to the request, and abort outside the `except` block
    (inside it the exception they caught, and its frames, would join the cycle)."""
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=exc)
    return code, message


def decoded(deserializer: Callable[[bytes], Any], data: bytes) -> Any:
    """A request message from its bytes: malformed bytes are the client's error
    (INVALID_ARGUMENT, naming the message type), not grpc's UNKNOWN with a traceback's words."""
    try:
        return deserializer(data)
    except DecodeError:
        kind = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
        name = kind.full_name if kind is not None else "request message"
        raise errors.InvalidInput(f"request: not a valid {name}") from None


class ExceptionToStatusInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler so that raised exceptions become gRPC statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary
            # A single request is decoded in here, so that a malformed one gets its status.
            decode = handler.request_deserializer if handler.unary_unary else None

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    if decode is not None:
                        request = decoded(decode, request)
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped to a status here
                    code, message = failure_status(exc, method)
                del request  # see failure_status
                await context.abort(code, message)

            make = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return make(
                unary, None if decode else handler.request_deserializer, handler.response_serializer
            )

        inner_stream = handler.unary_stream or handler.stream_stream
        decode_one = handler.request_deserializer if handler.unary_stream else None

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                if decode_one is not None:
                    request = decoded(decode_one, request)
                async for response in inner_stream(request, context):
                    yield response
                return
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status here
                code, message = failure_status(exc, method)
            del request  # see failure_status
            await context.abort(code, message)

        async def writing(request: Any, context: grpc.aio.ServicerContext) -> None:
            """For handlers that send with `context.write()` (grpc's own health Watch)."""
            try:
                if decode_one is not None:
                    request = decoded(decode_one, request)
                await inner_stream(request, context)
                return
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status here
                code, message = failure_status(exc, method)
            del request  # see failure_status
            await context.abort(code, message)

        make_stream = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        wrapper = streaming if inspect.isasyncgenfunction(inner_stream) else writing
        return make_stream(
            wrapper,
            None if decode_one else handler.request_deserializer,
            handler.response_serializer,
        )


def _refusing(handler: grpc.RpcMethodHandler, error: errors.ServingError) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that raises `error` (the exception interceptor
    around it turns that into the status)."""
    if handler.unary_unary or handler.stream_unary:

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            raise error

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return make(unary, handler.request_deserializer, handler.response_serializer)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        raise error
        yield  # an async generator, as the exception interceptor expects

    make_stream = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return make_stream(stream, handler.request_deserializer, handler.response_serializer)


class RestrictedProtocolInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call to a restricted method without its header (`serving.restricted`);
    placed inside ExceptionToStatusInterceptor, which answers PERMISSION_DENIED."""

    def __init__(self, rules: Mapping[str, Rule]) -> None:
        self._rules = dict(rules)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        rule = self._rules.get(handler_call_details.method)
        if (
            handler is None
            or rule is None
            or rule.allows(handler_call_details.invocation_metadata or ())
        ):
            return handler
        return _refusing(handler, errors.PermissionDenied(rule.message))


class RequestBytesInterceptor(grpc.aio.ServerInterceptor):
    """Reads every request message under the request-bytes budget (`serving.budget`), for the
    Python front end when it owns the port. grpc.aio reads a unary call's message before its
    handler runs, so each handler becomes one that takes a stream of requests and reads them
    itself (the wire is the same for the client): a read starts when the budget has room for
    it, and the message's bytes are held until the call ends (a stream: until it reads the
    next). Placed innermost: a restricted call is refused before anything is read."""

    def __init__(self, budget: RequestBudget) -> None:
        self._budget = budget
        self._busy = (
            f"server busy: the requests in progress would hold more than {budget.limit} bytes "
            "(--max-request-bytes-in-flight); retry after a back-off"
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not self._budget.limit:
            return handler
        budget, busy = self._budget, self._busy
        decode, encode = handler.request_deserializer, handler.response_serializer
        # Probes do not wait for room: under a flood they must still answer (their messages
        # are a model name at most; they are counted all the same).
        wait = handler_call_details.method not in HEALTH

        @contextlib.asynccontextmanager
        async def one(context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            """A unary call's request, its bytes held until the block ends."""
            data, held = await budget.read(context.read, busy, wait)
            try:
                if data is grpc.aio.EOF:
                    raise errors.InvalidInput("request: the call ended before its message")
                yield decoded(decode, data) if decode else data
            finally:
                budget.release(held)

        async def requests(context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            held = (0, 0)
            try:
                while True:
                    budget.release(held)  # the last message is done with
                    held = (0, 0)
                    data, held = await budget.read(context.read, busy, wait)
                    if data is grpc.aio.EOF:
                        return
                    request = decoded(decode, data) if decode else data
                    del data
                    yield request
            finally:
                budget.release(held)

        if handler.unary_unary:
            unary_inner = handler.unary_unary

            async def unary(_: Any, context: grpc.aio.ServicerContext) -> Any:
                async with one(context) as request:
                    return await unary_inner(request, context)

            return grpc.stream_unary_rpc_method_handler(unary, None, encode)
        if handler.stream_unary:
            stream_unary_inner = handler.stream_unary

            async def gathering(_: Any, context: grpc.aio.ServicerContext) -> Any:
                return await stream_unary_inner(requests(context), context)

            return grpc.stream_unary_rpc_method_handler(gathering, None, encode)
        inner = handler.unary_stream or handler.stream_stream
        single = handler.unary_stream is not None

        if inspect.isasyncgenfunction(inner):

            async def streaming(_: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if not single:
                    async for response in inner(requests(context), context):
                        yield response
                    return
                async with one(context) as request:
                    async for response in inner(request, context):
                        yield response

            return grpc.stream_stream_rpc_method_handler(streaming, None, encode)

        async def writing(_: Any, context: grpc.aio.ServicerContext) -> None:
            """For handlers that send with `context.write()` (grpc's own health Watch)."""
            if not single:
                await inner(requests(context), context)
                return
            async with one(context) as request:
                await inner(request, context)

        return grpc.stream_stream_rpc_method_handler(writing, None, encode)
