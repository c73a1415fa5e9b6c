"""Dynamic batching: queued requests of one model version run together.

Each instance of the model (an onnxruntime session) has a worker task. A free worker takes the
oldest request and every queued request with the same per-item shape, up to `max_batch_size`;
if the batch is below the preferred size it waits at most `max_queue_delay` (counted from the
oldest request's arrival) for more. The batch then runs on a thread, off the event loop, and
each request gets its own slice of the outputs — or its own error. Without dynamic batching
(`batching=False`) a worker takes exactly one request per execution.

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
    """The queue and workers of one model version."""

    def __init__(self, policy: BatchPolicy, run: Runner, stats: ModelStats, name: str,
                 on_queued: Callable[[float], None] = lambda seconds: None) -> None:
        self.policy = policy
        self._on_queued = on_queued
        self._run = run
        self._stats = stats
        self._name = name
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=policy.instances,
                                        thread_name_prefix=f"infer-{name}")
        self._closing = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers = [asyncio.create_task(self._worker(i), name=f"batcher-{name}-{i}")
                         for i in range(policy.instances)]

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Tensors, size: int, timeout_s: float | None = None
                     ) -> tuple[Tensors, int]:
        """Queue one request; return its outputs and its queue time in ns."""
        if self._closing:
            raise ModelNotReady(f"model '{self._name}' is unloading")
        cap = self.policy.max_queue_size
        if cap and len(self._queue) >= cap:
            raise QueueFull(f"model '{self._name}': queue full ({cap} requests); "
                            "retry after a back-off")
        loop = asyncio.get_running_loop()
        now = loop.time()
        timeout = timeout_s if timeout_s is not None else self.policy.default_timeout_s
        pending = _Pending(inputs, size, _shape_key(inputs, self.policy.batching),
                           loop.create_future(), now, now + timeout if timeout else None)
        self._queue.append(pending)
        self._idle.clear()
        self._arrived.set()
        try:
            outputs = await pending.future
        except asyncio.CancelledError:
            pending.future.cancel()  # still queued: the worker skips it
            raise
        return outputs, pending.queue_ns

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

    async def _worker(self, instance: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._busy == 0:
                    self._idle.set()
                self._arrived.clear()
                await self._arrived.wait()
            batch = self._take(loop.time())
            if not batch:
                continue
            self._busy += 1
            try:
                delay = self.policy.max_queue_delay_s
                if self.policy.batching and delay > 0 and not self._full(batch):
                    batch = await self._fill(batch, batch[0].enqueued + delay)
                await self._execute(batch, instance, loop)
            finally:
                self._busy -= 1

    async def _fill(self, batch: list[_Pending], until: float) -> list[_Pending]:
        """Wait (at most until `until`) for more requests to join `batch`."""
        loop = asyncio.get_running_loop()
        while not self._full(batch):
            remaining = until - loop.time()
            if remaining <= 0:
                break
            if not self._queue:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
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
        start = loop.time()
        for p in batch:
            p.queue_ns = int((start - p.enqueued) * 1e9)
            self._stats.queue.add(p.queue_ns)
            self._on_queued(p.queue_ns / 1e9)
        sizes = [p.size for p in batch]
        try:
            outputs, input_ns, infer_ns, output_ns = await loop.run_in_executor(
                self._pool, self._run_batch, [p.inputs for p in batch], sizes, instance)
        except Exception as exc:
            log.error("model '%s': inference failed", self._name, exc_info=exc)
            error = InferenceError(f"model '{self._name}': inference failed")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        self._stats.record_execution(sum(sizes), len(batch), input_ns, infer_ns, output_ns)
        for p, out in zip(batch, outputs, strict=True):
            if not p.future.done():
                p.future.set_result(out)

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
        """Refuse new requests, let queued and running ones finish, stop the workers."""
        self._closing = True
        await self._idle.wait()
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._pool.shutdown(wait=True)
