"""Dynamic batching: queued requests of one model version run together.

Scheduling is event-driven, on the event loop: whenever a request arrives or an instance (an
onnxruntime session) comes free, `_dispatch` forms batches for the free instances. A batch is
the oldest live request and every queued request with the same per-item shape, up to
`max_batch_size`; if it is below the preferred size it waits at most `max_queue_delay`
(counted from the oldest request's arrival) for more, by a timer. The batch then runs on the
instance's thread, off the event loop; when it is done one callback on the loop hands each
request its own slice of the outputs, or its own error, and dispatches the next batch. Without
dynamic batching (`batching=False`) a batch is exactly one request.

No dispatcher task, no task per batch: a request costs one future, a batch one thread hand-off
each way. On this 2-core machine the event loop is what a served request mostly waits for, so
every loop iteration saved is throughput.

Requests whose client cancelled are dropped without being computed; requests whose queue
timeout passed fail with DEADLINE_EXCEEDED; a full queue rejects at once with QueueFull.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from core.errors import DeadlineExceeded, InferenceError, ModelNotReady, QueueFull
from serving.stats import ModelStats

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
SPIN_BELOW_S = 0.002  # queue delays shorter than this are waited by yielding, not by a timer
# run(inputs, instance) -> outputs; called on a worker thread.
Runner = Callable[[Tensors, int], Tensors]


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int  # elements per execution (0 = the model does not batch)
    batching: bool  # dynamic batching on
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0  # 0 = unbounded
    default_timeout_s: float | None = None
    instances: int = 1


@dataclass(eq=False)
class _Pending:
    inputs: Tensors
    size: int  # batch elements
    key: tuple  # per-item shapes: only equal keys batch together
    future: asyncio.Future[Tensors]
    enqueued: float  # loop time
    deadline: float | None
    queue_ns: int = 0


def _shape_key(inputs: Tensors, batching: bool) -> tuple:
    return tuple(
        sorted((n, a.shape[1:] if batching else a.shape, a.dtype.str) for n, a in inputs.items())
    )


class Batcher:
    """The queue, the scheduling and the instances of one model version. Built, and used, on
    the event loop; only `_run_batch` runs on an instance's thread."""

    def __init__(
        self,
        policy: BatchPolicy,
        run: Runner,
        stats: ModelStats,
        name: str,
        on_queued: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self.policy = policy
        self._on_queued = on_queued
        self._run = run
        self._stats = stats
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._queue: deque[_Pending] = deque()
        self._free = list(range(policy.instances))  # idle instances
        self._idle = asyncio.Event()  # nothing queued, nothing running
        self._idle.set()
        self._wakeup: asyncio.Handle | None = None  # a batch waiting for company re-checks
        # One thread per instance: a free instance always finds a free thread.
        self._pool = ThreadPoolExecutor(
            max_workers=policy.instances, thread_name_prefix=f"infer-{name}"
        )
        self._closing = False

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    async def submit(
        self, inputs: Tensors, size: int, timeout_s: float | None = None
    ) -> tuple[Tensors, int]:
        """Run one request in a batch; return its outputs and its queue time in ns."""
        if self._closing:
            raise ModelNotReady(f"model '{self._name}' is unloading")
        cap = self.policy.max_queue_size
        if cap and len(self._queue) >= cap:
            raise QueueFull(
                f"model '{self._name}': queue full ({cap} requests); retry after a back-off"
            )
        now = self._loop.time()
        timeout = timeout_s if timeout_s is not None else self.policy.default_timeout_s
        pending = _Pending(
            inputs,
            size,
            _shape_key(inputs, self.policy.batching),
            self._loop.create_future(),
            now,
            now + timeout if timeout else None,
        )
        self._queue.append(pending)
        self._idle.clear()
        self._dispatch()
        try:
            outputs = await pending.future
        except asyncio.CancelledError:
            pending.future.cancel()  # still queued: `_take` drops it
            raise
        return outputs, pending.queue_ns

    def _dispatch(self) -> None:
        """Start batches on the free instances while requests wait; if the next batch may
        still wait for company, look again when its delay runs out."""
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        p = self.policy
        while self._queue and self._free:
            now = self._loop.time()
            batch = self._take(now)
            if not batch:
                continue
            until = batch[0].enqueued + p.max_queue_delay_s
            if p.batching and now < until and not self._full(batch):
                self._queue.extendleft(reversed(batch))
                if until - now < SPIN_BELOW_S:
                    # The event loop's timers are millisecond-grained: a 200 us wait would
                    # take a millisecond or more. Look again on the next iteration instead.
                    self._wakeup = self._loop.call_soon(self._dispatch)
                else:
                    self._wakeup = self._loop.call_at(until, self._dispatch)
                return
            self._start(batch, self._free.pop())
        if not self._queue and len(self._free) == p.instances:
            self._idle.set()

    def _take(self, now: float) -> list[_Pending]:
        """Pop the next batch: the oldest live request and same-shaped ones behind it."""
        batch: list[_Pending] = []
        total = 0
        limit = self.policy.max_batch_size if self.policy.batching else 0
        keep: deque[_Pending] = deque()
        while self._queue:
            p = self._queue.popleft()
            if p.future.done():  # cancelled by its client
                continue
            if p.deadline is not None and now > p.deadline:
                p.future.set_exception(
                    DeadlineExceeded(
                        f"model '{self._name}': request timed out after "
                        f"{(now - p.enqueued) * 1e3:.1f} ms in the queue"
                    )
                )
                continue
            if not batch:
                batch.append(p)
                total = p.size
                if not limit:
                    break
            elif p.key == batch[0].key and total + p.size <= limit:
                batch.append(p)
                total += p.size
            else:
                keep.append(p)
            if limit and total >= limit:
                break
        keep.extend(self._queue)
        self._queue = keep
        return batch

    def _full(self, batch: list[_Pending]) -> bool:
        total = sum(p.size for p in batch)
        if total >= self.policy.max_batch_size:
            return True
        return total in self.policy.preferred_batch_sizes

    def _start(self, batch: list[_Pending], instance: int) -> None:
        """Hand `batch` to `instance`'s thread; `_finish` runs on the loop when it is done."""
        start = self._loop.time()
        for p in batch:
            p.queue_ns = int((start - p.enqueued) * 1e9)
            self._stats.record_queue(p.queue_ns)
            self._on_queued(p.queue_ns / 1e9)
        sizes = [p.size for p in batch]
        done = self._pool.submit(self._run_batch, [p.inputs for p in batch], sizes, instance)
        done.add_done_callback(
            lambda d: self._loop.call_soon_threadsafe(self._finish, batch, sizes, instance, d)
        )

    def _finish(self, batch: list[_Pending], sizes: list[int], instance: int, done: Future) -> None:
        """On the loop: give each request its outputs (or the error), then dispatch more."""
        self._free.append(instance)
        try:
            outputs, *times = done.result()
        except Exception as exc:
            log.error("model '%s': inference failed", self._name, exc_info=exc)
            error = InferenceError(f"model '{self._name}': inference failed")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
        else:
            self._stats.record_execution(sum(sizes), len(batch), *times)
            for p, out in zip(batch, outputs, strict=True):
                if not p.future.done():  # cancelled while it ran: nobody to answer
                    p.future.set_result(out)
        self._dispatch()

    def _run_batch(
        self, inputs: list[Tensors], sizes: list[int], instance: int
    ) -> tuple[list[Tensors], int, int, int]:
        """On the instance's thread: concatenate, run, split."""
        t0 = time.perf_counter_ns()
        if len(inputs) == 1:
            merged = inputs[0]
        else:
            merged = {n: np.concatenate([i[n] for i in inputs]) for n in inputs[0]}
        t1 = time.perf_counter_ns()
        result = self._run(merged, instance)
        t2 = time.perf_counter_ns()
        if len(inputs) == 1:
            split = [result]
        else:
            bounds = np.cumsum(sizes)[:-1]
            parts = {n: np.split(a, bounds) for n, a in result.items()}
            split = [{n: parts[n][i] for n in result} for i in range(len(inputs))]
        t3 = time.perf_counter_ns()
        return split, t1 - t0, t2 - t1, t3 - t2

    async def close(self) -> None:
        """Refuse new requests, let queued and running ones finish, stop the threads."""
        self._closing = True
        await self._idle.wait()
        self._pool.shutdown(wait=True)
