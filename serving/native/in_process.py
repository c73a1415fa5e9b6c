"""Unary methods the native front end has this process's servicers answer, without the hop to
the Python gRPC server behind it (serving/native/in_process.h).

Forwarded, a unary call the fast path does not run (the typed Translate and Forecaster APIs,
the V2 protocol's other RPCs, and any ModelInfer the fast path leaves: the translator's BYTES,
a request to refuse) cost two gRPC calls: the front end's to the Python server over its Unix
socket, and grpc.aio's own. Its servicer now gets the request's bytes from the front end's
thread, on the event loop, and answers through the call's handle; errors become statuses by
`serving.interceptors` (`decoded`, `failure_status`), as for the Python server's calls. Only
streams (ModelStreamInfer, TranslateStream, health's Watch, reflection) and grpc's own health
Check are forwarded. The servicers are the same objects the Python server registers: one
dataplane.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from serving.interceptors import decoded, failure_status


class Collected:
    """Stands in for a grpc server in a generated `add_*Servicer_to_server`, to keep the
    method handlers it registers: {"/package.Service/Method": handler}."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # the registered ones below are the same

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})


class _Aborted(Exception):
    """`context.abort` of an in-process call: the status it ends with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """What the in-process servicers use of grpc.aio's ServicerContext: the deadline, and for
    grpc's own servicers (health) `abort` and a stream's `write`."""

    def __init__(self, call: Any, respond: Callable[[Any], bytes]) -> None:
        t = call.timeout_s
        self._deadline = time.monotonic() + t if t >= 0 else None
        self._call, self._respond = call, respond

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)

    async def write(self, message: Any) -> None:
        self._call.write(self._respond(message))


def _status(exc: BaseException, method: str) -> tuple[int, str]:
    if isinstance(exc, _Aborted):
        return exc.code.value[0], exc.details
    if isinstance(exc, asyncio.CancelledError):  # the call was cancelled: nobody reads it
        return grpc.StatusCode.CANCELLED.value[0], "cancelled"
    code, message = failure_status(exc, method)
    return code.value[0], message


class InProcess:
    """The handler the front end calls, on its thread with the GIL, with the calls gathered
    since its last call (unary calls with their request, streams as they start) and, through
    `messages`, the messages the streams read; each call is answered from `loop` by a task of
    its own."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._loop = loop
        self._handlers = dict(handlers)
        self._running: dict[int, asyncio.Task] = {}  # by call id, until answered
        self._inboxes: dict[int, asyncio.Queue[bytes | None]] = {}  # a stream's messages
        # Answered here, by method: every key from the start (a scrape reads it on its thread).
        self.calls: Counter[str] = Counter(dict.fromkeys(self._handlers, 0))

    @property
    def methods(self) -> list[str]:
        """The unary methods."""
        return sorted(m for m, h in self._handlers.items() if h.unary_unary is not None)

    @property
    def streams(self) -> list[str]:
        """The streaming ones (server and bidirectional streams)."""
        return sorted(m for m, h in self._handlers.items() if h.unary_stream or h.stream_stream)

    def __call__(self, calls: list[Any]) -> None:
        self._loop.call_soon_threadsafe(self._start, calls)

    def messages(self, items: list[tuple[int, bytes | None]]) -> None:
        """The front end's: messages the streams read, in order; None is a stream's end."""
        self._loop.call_soon_threadsafe(self._deliver, items)

    def cancel(self, ids: list[int]) -> None:
        """The front end's: these calls were cancelled (on its thread, with the GIL)."""
        self._loop.call_soon_threadsafe(self._cancel, ids)

    def _start(self, calls: list[Any]) -> None:
        for call in calls:
            if self._handlers[call.method].unary_unary is not None:
                work = self._answer(call)
            else:
                self._inboxes[call.id] = inbox = asyncio.Queue()
                work = self._stream(call, inbox)
            task = self._loop.create_task(work)
            self._running[call.id] = task  # (held: the loop keeps only weak references)
            task.add_done_callback(lambda _, i=call.id: self._running.pop(i, None))

    def _deliver(self, items: list[tuple[int, bytes | None]]) -> None:
        for i, data in items:  # a stream already ended is no longer there
            if (inbox := self._inboxes.get(i)) is not None:
                inbox.put_nowait(data)

    def _cancel(self, ids: list[int]) -> None:
        for i in ids:  # one already answered is no longer there
            if (task := self._running.get(i)) is not None:
                task.cancel()

    async def _answer(self, call: Any) -> None:
        handler = self._handlers[call.method]
        self.calls[call.method] += 1
        respond: Callable[[Any], bytes] = handler.response_serializer
        try:
            request = decoded(handler.request_deserializer, call.request)
            response = await handler.unary_unary(request, _Context(call, respond))
            data = respond(response)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - to a status here
            call.fail(*_status(exc, call.method))
        else:
            call.reply(data)

    async def _stream(self, call: Any, inbox: asyncio.Queue[bytes | None]) -> None:
        """A stream, as grpc.aio runs it: its handler's responses written as they come (an
        async generator's, or what it writes through the context), then OK or its error."""
        handler = self._handlers[call.method]
        self.calls[call.method] += 1
        context = _Context(call, handler.response_serializer)
        decode = handler.request_deserializer

        async def requests() -> Any:
            while (data := await inbox.get()) is not None:
                yield decoded(decode, data)

        try:
            if handler.unary_stream is not None:
                data = await inbox.get()
                if data is None:
                    raise _Aborted(grpc.StatusCode.CANCELLED, "no request received")
                result = handler.unary_stream(decoded(decode, data), context)
            else:
                result = handler.stream_stream(requests(), context)
            if inspect.isasyncgen(result):
                async for response in result:
                    await context.write(response)
            else:
                await result
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - to a status here
            call.fail(*_status(exc, call.method))
        else:
            call.finish()
        finally:
            self._inboxes.pop(call.id, None)
