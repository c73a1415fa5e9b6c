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


class _Context:
    """What the in-process servicers use of grpc.aio's ServicerContext: the deadline."""

    def __init__(self, timeout_s: float) -> None:
        self._deadline = time.monotonic() + timeout_s if timeout_s >= 0 else None

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())


class InProcess:
    """The handler the front end calls, on its thread with the GIL, with the calls gathered
    since its last call; each is answered from `loop`."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._loop = loop
        # Only unary methods run in process; the front end forwards streams to the server.
        self._handlers = {m: h for m, h in handlers.items() if h.unary_unary is not None}
        self._running: dict[int, asyncio.Task] = {}  # by call id, until answered
        # Answered here, by method: every key from the start (a scrape reads it on its thread).
        self.calls: Counter[str] = Counter(dict.fromkeys(self._handlers, 0))

    @property
    def methods(self) -> list[str]:
        return sorted(self._handlers)

    def __call__(self, calls: list[Any]) -> None:
        self._loop.call_soon_threadsafe(self._start, calls)

    def cancel(self, ids: list[int]) -> None:
        """The front end's: these calls were cancelled (on its thread, with the GIL)."""
        self._loop.call_soon_threadsafe(self._cancel, ids)

    def _start(self, calls: list[Any]) -> None:
        for call in calls:
            task = self._loop.create_task(self._answer(call))
            self._running[call.id] = task  # (held: the loop keeps only weak references)
            task.add_done_callback(lambda _, i=call.id: self._running.pop(i, None))

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
            response = await handler.unary_unary(request, _Context(call.timeout_s))
            data = respond(response)
        except asyncio.CancelledError:  # the call was cancelled: nobody reads the status
            code, message = grpc.StatusCode.CANCELLED, "cancelled"
        except Exception as exc:  # noqa: BLE001 - mapped to a status here, as by the interceptor
            code, message = failure_status(exc, call.method)
        else:
            call.reply(data)
            return
        call.fail(code.value[0], message)
