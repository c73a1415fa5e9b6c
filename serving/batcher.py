"""Dynamic batching: queued requests of one model version run together.

One dispatcher task per model version forms batches: when an instance (an onnxruntime session)
is free it takes the oldest request and every queued request with the same per-item shape, up
to `max_batch_size`; if the batch is below the preferred size it waits at most
`max_queue_delay` (counted from the oldest request's arrival) for more. The batch then runs on a
thread, off the event loop, and each request gets its own slice of the outputs, or its own
error. Without dynamic batching (`batching=False`) a batch is exactly one request.

Fast path: a request that finds an idle instance, an empty queue and nothing to wait for runs
at once from its own coroutine, skipping the queue and the dispatcher's wake-up.

Requests whose client cancelled are dropped without being computed; requests whose queue
timeout passed fail with DEADLINE_EXCEEDED; a full queue rejects at once with QueueFull.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from serving.errors import DeadlineExceeded, InferenceError, ModelNotReady, QueueFull
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
    return tuple(sorted((n, a.shape[1:] if batching else a.shape, a.dtype.str)
                        for n, a in inputs.items()))


class Batcher:
    """The queue, the dispatcher and the instances of one model version."""

    def __init__(self, policy: BatchPolicy, run: Runner, stats: ModelStats, name: str,
                 on_queued: Callable[[float], None] = lambda seconds: None) -> None:
        self.policy = policy
        self._on_queued = on_queued
        self._run = run
        self._stats = stats
        self._name = name
        self._queue: deque[_Pending] = deque()
        self._free = list(range(policy.instances))  # idle instances
        self._wake = asyncio.Event()  # a request arrived or an instance came free
        self._idle = asyncio.Event()  # nothing queued, nothing running
        self._idle.set()
        self._pool = ThreadPoolExecutor(max_workers=policy.instances,
                                        thread_name_prefix=f"infer-{name}")
        self._closing = False
        self._running: set[asyncio.Task] = set()
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"batcher-{name}")

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Tensors, size: int, timeout_s: float | None = None
                     ) -> tuple[Tensors, int]:
        """Run one request, queued or at once; return its outputs and its queue time in ns."""
        if self._closing:
            raise ModelNotReady(f"model '{self._name}' is unloading")
        loop = asyncio.get_running_loop()
        if not self._queue and self._free and self._runs_alone(size):
            # Fast path: an idle instance and nobody to batch with. No queue, no dispatcher.
            instance = self._free.pop()
            self._idle.clear()
            self._stats.queue.add(0)
            self._on_queued(0.0)
            try:
                (outputs,), *times = await loop.run_in_executor(
                    self._pool, self._run_batch, [inputs], [size], instance)
            except Exception as exc:
                log.error("model '%s': inference failed", self._name, exc_info=exc)
                raise InferenceError(f"model '{self._name}': inference failed") from None
            finally:
                self._release(instance)
            self._stats.record_execution(size, 1, *times)
            return outputs, 0
        cap = self.policy.max_queue_size
        if cap and len(self._queue) >= cap:
            raise QueueFull(f"model '{self._name}': queue full ({cap} requests); "
                            "retry after a back-off")
        now = loop.time()
        timeout = timeout_s if timeout_s is not None else self.policy.default_timeout_s
        pending = _Pending(inputs, size, _shape_key(inputs, self.policy.batching),
                           loop.create_future(), now, now + timeout if timeout else None)
        self._queue.append(pending)
        self._idle.clear()
        self._wake.set()
        try:
            outputs = await pending.future
        except asyncio.CancelledError:
            pending.future.cancel()  # still queued: the dispatcher skips it
            raise
        return outputs, pending.queue_ns

    def _runs_alone(self, size: int) -> bool:
        """Would this request be dispatched at once, alone, if it were queued now?"""
        p = self.policy
        return (not p.batching or p.max_queue_delay_s <= 0 or size >= p.max_batch_size
                or size in p.preferred_batch_sizes)

    def _release(self, instance: int) -> None:
        self._free.append(instance)
        if self._queue:
            self._wake.set()
        elif len(self._free) == self.policy.instances:
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
                p.future.set_exception(DeadlineExceeded(
                    f"model '{self._name}': request timed out after "
                    f"{(now - p.enqueued) * 1e3:.1f} ms in the queue"))
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

    async def _dispatch(self) -> None:
        """Form batches and start them on free instances, one scheduler per model version."""
        loop = asyncio.get_running_loop()
        while True:
            while not (self._queue and self._free):
                if not self._queue and len(self._free) == self.policy.instances:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            batch = self._take(loop.time())
            if not batch:
                continue
            delay = self.policy.max_queue_delay_s
            if self.policy.batching and delay > 0 and not self._full(batch):
                batch = await self._fill(batch, batch[0].enqueued + delay)
                if not batch:
                    continue
            instance = self._free.pop()
            task = loop.create_task(self._execute(batch, instance, loop))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _fill(self, batch: list[_Pending], until: float) -> list[_Pending]:
        """Wait (at most until `until`) for more requests to join `batch`."""
        loop = asyncio.get_running_loop()
        while not self._full(batch):
            remaining = until - loop.time()
            if remaining <= 0:
                break
            if not self._queue:
                if remaining < SPIN_BELOW_S:
                    # The event loop's timers are millisecond-grained: a 200 us wait would
                    # take a millisecond or more. Yield instead, so arriving requests enqueue.
                    await asyncio.sleep(0)
                    continue
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            # Put the batch back in front and take again: same rules, one code path.
            self._queue.extendleft(reversed(batch))
            batch = self._take(loop.time())
            if not batch:
                break
        return batch

    async def _execute(self, batch: list[_Pending], instance: int,
                       loop: asyncio.AbstractEventLoop) -> None:
        try:
            start = loop.time()
            for p in batch:
                p.queue_ns = int((start - p.enqueued) * 1e9)
                self._stats.queue.add(p.queue_ns)
                self._on_queued(p.queue_ns / 1e9)
            sizes = [p.size for p in batch]
            try:
                outputs, *times = await loop.run_in_executor(
                    self._pool, self._run_batch, [p.inputs for p in batch], sizes, instance)
            except Exception as exc:
                log.error("model '%s': inference failed", self._name, exc_info=exc)
                error = InferenceError(f"model '{self._name}': inference failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                return
            self._stats.record_execution(sum(sizes), len(batch), *times)
            for p, out in zip(batch, outputs, strict=True):
                if not p.future.done():
                    p.future.set_result(out)
        finally:
            self._release(instance)

    def _run_batch(self, inputs: list[Tensors], sizes: list[int], instance: int
                   ) -> tuple[list[Tensors], int, int, int]:
        """On a worker thread: concatenate, run, split."""
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
        """Refuse new requests, let queued and running ones finish, stop the dispatcher."""
        self._closing = True
        await self._idle.wait()
        self._dispatcher.cancel()
        await asyncio.gather(self._dispatcher, *self._running, return_exceptions=True)
        self._pool.shutdown(wait=True)
