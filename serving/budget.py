"""The request-bytes budget of the Python gRPC front end and of the HTTP port beside it
(`--max-request-bytes-in-flight`; docs/serving.md, "Memory, worst case").

With the native front end the budget is its own (serving/native/budget.h), and the HTTP port
takes from it. Without it, grpc.aio owns the gRPC port, and this budget bounds what its calls
hold. grpc.aio's transport (the gRPC core in grpcio 1.85) receives no more of a message than the
stream's flow-control window until the application reads it, provided the window does not grow
by itself: the server turns off HTTP/2 BDP probing (`grpc.http2.bdp_probe` 0), which otherwise
widened the windows of new streams until a whole flood arrived unread. So a read is the moment
to decide, and every request is read by `RequestBytesInterceptor` under this budget:

- **reads**: a read starts only while the received bytes, with what the reads in progress may
  hold, leave room for a message at the cap (`RECEIVED_COPIES` x the cap); one alone may always
  start. A read in progress counts a message at the cap for its first `SLOW_S`; after that, what
  the process has grown by since it started, beyond what the budget took meanwhile, so that a
  slow or idle client (a stream waiting for its next message) does not keep the others out.
  While the received bytes and the late reads pass the limit, the newest late reads are shed
  (RESOURCE_EXHAUSTED): a slow read admitted small may speed up;
- **received**: a message that has arrived counts `RECEIVED_COPIES` x its size until its call
  ends (a stream: until it reads the next one); the HTTP port's requests count here too, their
  bytes as they are read and their serving copies once arrived (`take`, `give`), so the two
  ports hold one budget;
- **serving**: its further copies (parsed, batched), `FURTHER_COPIES` x its size, taken once it
  has arrived; a message that does not fit waits, in arrival order; one alone always fits.

The limit is split as the native one's: the serving copies of one message at the cap, and the
rest for what calls receive.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from core.errors import QueueFull

# A received message's cost: grpc's buffer and the bytes object it hands the handler. Its
# further copies: the parsed request and what is built from it (arrays, a batch), counted three
# times as on the native front end (at two, the flood beside HTTP bodies passed the bound in
# two runs of seven: the accounts leave the allocator's slack out).
RECEIVED_COPIES = 2
FURTHER_COPIES = 3
SLOW_S = 0.25  # a read counts a message at the cap this long, then what the process grew by
TICK_S = 0.005  # while slow reads are in progress, the watch looks this often
WAIT_S = 0.05  # a read waiting for room looks again at least this often

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class _Reading:
    started: float
    resident: int  # the process's resident bytes when it started (-1: unknown)
    accounted: int  # and what the budget held then
    task: asyncio.Task[Any] | None  # the handler's, cancelled to shed it
    shed: bool = False


class RequestBudget:
    def __init__(self, limit: int, cap: int) -> None:
        self.limit = max(limit, 0)  # 0: no budget
        self._serving_limit = cap * FURTHER_COPIES if self.limit else 0
        self._received_limit = max(self.limit - self._serving_limit, 1) if self.limit else 0
        self._charge = cap * RECEIVED_COPIES
        self._received = 0
        self._serving = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()  # serving copies
        self._reading: dict[int, _Reading] = {}  # in the order they started
        self._next = 0
        self._changed = asyncio.Event()  # reads waiting for room wait on it (bound on first use)
        self._watch: asyncio.Task[None] | None = None
        self.shed = 0  # calls ended while their message arrived
        try:
            self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # not Linux: a read counts a message at the cap until it ends
            self._statm = -1

    @property
    def held(self) -> int:
        return self._received + self._serving

    # -- the HTTP port (serving/rest/budget.py's `Budget`): refused, never queued (a 429) ----

    def take(self, n: int, mine: int) -> bool:
        if not self.limit:
            return True
        held = self.held  # with what the gRPC reads in progress may hold
        if self._reading:
            fresh, slow, _ = self._arriving(asyncio.get_running_loop().time())
            held += fresh + slow
        if held + n > self.limit and held > mine:
            return False
        self._received += n
        return True

    def give(self, n: int) -> None:
        if self.limit:
            self._received -= n
            self._freed()

    # -- gRPC messages -----------------------------------------------------------------------

    async def read(
        self, read: Callable[[], Awaitable[Any]], busy: str, wait: bool = True
    ) -> tuple[Any, tuple[int, int]]:
        """`read()`'s message (bytes, or grpc.aio.EOF) once the budget lets it be read, and what
        it holds (for `release`); QueueFull(`busy`) if it was shed while it arrived. `wait`
        False: read at once, counted all the same (health probes must answer under a flood)."""
        if not self.limit:
            return await read(), (0, 0)
        loop = asyncio.get_running_loop()
        while wait and not self._room():
            # Woken when bytes are given back or the watch has looked (a read turning slow);
            # the timeout is a safety net, not a poll.
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), WAIT_S)
            except TimeoutError:
                pass
        ticket, self._next = self._next, self._next + 1
        task = asyncio.current_task()
        entry = _Reading(loop.time(), self._resident(), self.held, task)
        self._reading[ticket] = entry
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._watching())
        try:
            data = await read()
        except asyncio.CancelledError:
            if not entry.shed:
                raise
            if task is not None:
                task.uncancel()  # the watch's cancellation, answered here
            raise QueueFull(busy) from None
        finally:
            self._reading.pop(ticket, None)
            self._freed()
        if data is grpc.aio.EOF:
            return data, (0, 0)
        return data, await self._hold(len(data))

    def release(self, held: tuple[int, int]) -> None:
        received, serving = held
        if received or serving:
            self._received -= received
            self._serving -= serving
            self._freed()

    async def _hold(self, size: int) -> tuple[int, int]:
        """A message of `size` bytes has arrived: count it received, and wait for its serving
        copies to fit."""
        if size == 0:
            return 0, 0
        received, serving = size * RECEIVED_COPIES, size * FURTHER_COPIES
        self._received += received
        if self._waiting or (self._serving + serving > self._serving_limit and self._serving):
            granted = asyncio.get_running_loop().create_future()
            self._waiting.append((serving, granted))
            try:
                await granted
            except BaseException:  # cancelled while it waited
                if granted.done() and not granted.cancelled():
                    self._serving -= serving
                else:
                    self._waiting.remove((serving, granted))
                self._received -= received
                self._freed()
                raise
        else:
            self._serving += serving
        return received, serving

    def _freed(self) -> None:
        """Bytes were given back: grant waiting serving copies, and wake waiting reads."""
        while self._waiting:
            serving, granted = self._waiting[0]
            if self._serving + serving > self._serving_limit and self._serving:
                break
            self._waiting.popleft()
            if not granted.done():
                self._serving += serving
                granted.set_result(None)
        self._changed.set()

    # -- what the reads in progress hold -----------------------------------------------------

    def _resident(self) -> int:
        if self._statm < 0:
            return -1
        try:
            return int(os.pread(self._statm, 128, 0).split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return -1

    def _arriving(self, now: float) -> tuple[int, int, list[int]]:
        """What the reads in progress may hold: the fresh ones (a message at the cap each), the
        slow ones (what the process grew by since the oldest started, beyond what the budget
        took), and the slow ones' tickets, oldest first. The resident memory is read only when
        some read is slow (on a busy server most reads are fresh)."""
        fresh = sum(1 for r in self._reading.values() if now - r.started < SLOW_S)
        slow = [t for t, r in self._reading.items() if now - r.started >= SLOW_S]
        if not slow:
            return fresh * self._charge, 0, slow
        resident, most = self._resident(), len(slow) * self._charge
        starts = [self._reading[t] for t in slow]
        if resident < 0 or any(r.resident < 0 for r in starts):
            return fresh * self._charge, most, slow
        growth = max((resident - r.resident) - (self.held - r.accounted) for r in starts)
        return fresh * self._charge, min(max(growth, 0), most), slow

    def _room(self) -> bool:
        if not self._reading:
            return self._received + self._charge <= self._received_limit or self._received == 0
        fresh, slow, _ = self._arriving(asyncio.get_running_loop().time())
        return self._received + fresh + slow + self._charge <= self._received_limit

    async def _watching(self) -> None:
        """While reads are in progress: shed the newest slow ones while the received bytes and
        what they hold pass the limit, each taken to hold an equal share (one slow read alone,
        with nothing received, may go on)."""
        loop = asyncio.get_running_loop()
        while self._reading:
            # Until the oldest read turns slow, nothing can be shed: sleep till then.
            oldest = next(iter(self._reading.values())).started
            await asyncio.sleep(max(oldest + SLOW_S - loop.time(), TICK_S))
            _, arriving, slow = self._arriving(loop.time())
            left = len(slow)
            for ticket in reversed(slow):
                if self._received + arriving * left / len(slow) <= self._received_limit or (
                    left == 1 and self._received == 0
                ):
                    break
                entry = self._reading.pop(ticket)
                if entry.task is not None:
                    entry.shed = True
                    entry.task.cancel()
                    self.shed += 1
                left -= 1
            self._changed.set()
