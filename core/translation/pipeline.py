"""Continuous batching on two threads: an encoder thread and a decode thread over one
`Translator`, each thread running its own onnxruntime session.

    submit --inbox--> encoder thread --ready--> decode thread --deliver(Delivery)-->

The encoder thread takes every sentence waiting in the inbox, encodes them in one call and
hands the group on. The decode thread drives a `DecodeBatch` step after step: between two
decoder steps, encoded groups join the batch (while rows are free) and finished requests
leave it at once, so a short sentence sent during a long one's decoding finishes first. The
encoder of new sentences thus runs while the decoder steps the others, on another core,
instead of stopping every row's decoding for it.

Only what a caller waits for is delivered: finished requests and the text of streamed ones.
A request with a queue deadline that passes before it joins the batch is dropped undecoded
and reported to `expire` when the deadline passes, not when rows free up: the encoder thread
wakes at the next deadline of the requests waiting in the inbox or, encoded, for rows.
No asyncio here: the served model runs a pipeline in its engine process (`engine.py`) and
delivers through a pipe. Thread-safe entry points: `submit`, `cancel`, `stop`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, MutableSequence, Sequence
from dataclasses import dataclass

from core.translation.batch import (
    DecodeBatch,
    DecodeRequest,
    EncodedSources,
    TranslationResult,
)
from core.translation.translator import Translator

log = logging.getLogger(__name__)

STEPS, WAITING = 0, 1  # indices into the counters a pipeline keeps up to date


@dataclass(eq=False)
class _Job:
    request: DecodeRequest
    enqueued: float  # time.monotonic() when the server accepted it (system-wide clock)
    deadline: float | None = None  # time.monotonic() after which it may not join the batch
    cancelled: bool = False
    expired: bool = False  # reported late while encoded; dropped when its group joins

    def late(self, now: float) -> bool:
        return (
            self.deadline is not None
            and now > self.deadline
            and not self.cancelled
            and not self.expired
        )


@dataclass(eq=False)
class _Group:
    """Jobs encoded together, waiting to join the decode batch."""

    jobs: list[_Job]
    encoded: EncodedSources
    queued_ns: list[int]  # each job's time in the inbox
    encode_ns: int


@dataclass
class Delivery:
    """What the decode thread hands on: per request (id, text decoded since the last delivery
    for streamed requests, the result once finished), and the accounting of the steps since
    the last delivery."""

    updates: list[tuple[Hashable, str, TranslationResult | None]]
    queued_ns: list[int]  # inbox time of each request that joined
    executions: list[tuple[int, int, int, int]]  # per step: rows, requests, input ns, infer ns


class Pipeline:
    """`deliver(Delivery)`, `fail(ids)` and `expire([(id, seconds queued)])` are called on the
    pipeline's threads. `counters`
    [STEPS] counts decoder steps, [WAITING] the requests not decoding yet (a shared array in
    the engine process, so the server reads them without a message)."""

    def __init__(
        self,
        translator: Translator,
        max_rows: int,
        deliver: Callable[[Delivery], None],
        fail: Callable[[list[Hashable]], None],
        expire: Callable[[list[tuple[Hashable, float]]], None],
        counters: MutableSequence[int] | None = None,
    ) -> None:
        self.translator, self.max_rows = translator, max_rows
        self._deliver, self._fail, self._expire = deliver, fail, expire
        self.counters = counters if counters is not None else [0, 0]
        self._jobs: dict[Hashable, _Job] = {}  # submitted, not finished or cancelled
        self._inbox: deque[_Job] = deque()  # submit appends, the encoder thread pops
        self._inbox_lock = threading.Lock()
        self._ready: deque[_Group] = deque()  # the encoder thread appends, decode pops
        self._ready_rows = 0  # rows of the groups in _ready (under _ready_lock)
        self._ready_lock = threading.Lock()
        self._encode_work = threading.Event()  # wakes the encoder thread
        self._work = threading.Event()  # wakes the decode thread
        self._stopped = False
        self._threads = [
            threading.Thread(target=target, name=f"{kind}-translator", daemon=True)
            for kind, target in (("encode", self._encoder_thread), ("decode", self._decode_thread))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End both threads. Requests still in the pipeline are dropped: the server has
        answered or given up on every one it still wants before it stops an engine, and when
        the server died nobody waits for them."""
        self.cancel(list(self._jobs))
        self._stopped = True
        self._encode_work.set()
        self._work.set()
        for thread in self._threads:
            thread.join()

    def submit(self, requests: Sequence[tuple[DecodeRequest, float, float | None]]) -> None:
        """(request, time.monotonic() when it arrived, time.monotonic() after which it may not
        start decoding or None); ids must be unique."""
        for request, enqueued, deadline in requests:
            job = _Job(request, enqueued, deadline)
            self._jobs[request.id] = job
            with self._inbox_lock:
                self._inbox.append(job)
        self._count_waiting()
        self._encode_work.set()

    def cancel(self, ids: Sequence[Hashable]) -> None:
        """Drop these requests wherever they are; unknown (finished) ids are ignored."""
        for i in ids:
            job = self._jobs.pop(i, None)
            if job is not None:
                job.cancelled = True
        self._work.set()

    def _count_waiting(self) -> None:
        with self._ready_lock:
            encoded = sum(not j.expired for g in self._ready for j in g.jobs)
        self.counters[WAITING] = len(self._inbox) + encoded

    # -- the encoder thread ------------------------------------------------------------------

    def _take(self) -> list[_Job]:
        """The waiting jobs, up to the rows the ready queue has room for (at least one job),
        cancelled ones dropped, late ones expired."""
        jobs: list[_Job] = []
        late: list[_Job] = []
        rows = self._ready_rows
        now = time.monotonic()
        with self._inbox_lock:
            while self._inbox:
                job = self._inbox[0]
                if job.cancelled or job.late(now):
                    self._inbox.popleft()
                    if not job.cancelled:
                        late.append(job)
                    continue
                if jobs and rows + job.request.beam_size > self.max_rows:
                    break
                self._inbox.popleft()
                rows += job.request.beam_size
                jobs.append(job)
        if late:
            self._expire_jobs(late, now)
        return jobs

    def _sweep_late(self) -> float | None:
        """Expire the waiting requests whose deadline passed (in the inbox: removed; encoded:
        marked, and dropped when their group joins); seconds to the next deadline, or None."""
        now = time.monotonic()
        with self._inbox_lock:
            late = [j for j in self._inbox if j.late(now)]
            if late:
                self._inbox = deque(j for j in self._inbox if j not in late)
            waiting = list(self._inbox)
        with self._ready_lock:  # the flag is set before the decode thread can pop the group
            for job in (j for g in self._ready for j in g.jobs):
                if job.late(now):
                    job.expired = True
                    late.append(job)
                elif not job.expired:
                    waiting.append(job)
        if late:
            self._expire_jobs(late, now)
        deadlines = [j.deadline for j in waiting if j.deadline is not None and not j.cancelled]
        return max(min(deadlines) - now, 0.0) + 1e-3 if deadlines else None

    def _expire_jobs(self, jobs: Sequence[_Job], now: float) -> None:
        self._forget(jobs)
        self._count_waiting()
        self._expire([(j.request.id, now - j.enqueued) for j in jobs])

    def _encoder_thread(self) -> None:
        """Encode what arrived, in one call, while the ready queue holds fewer than
        max_rows rows (so that memory stays bounded when the decoder falls behind); while
        idle, wake at the next queue deadline to expire whoever is still waiting."""
        while True:
            if not self._inbox or self._ready_rows >= self.max_rows:
                if self._stopped:
                    return
                self._encode_work.wait(self._sweep_late())
                self._encode_work.clear()  # a set() after wait() returned is seen: re-read
                continue
            jobs = self._take()
            if not jobs:
                continue
            now = time.monotonic()
            queued = [int((now - j.enqueued) * 1e9) for j in jobs]
            t0 = time.perf_counter_ns()
            try:
                encoded = self.translator.encode([j.request for j in jobs])
            except Exception as exc:
                log.error("translator: encoding failed", exc_info=exc)
                self._forget(jobs)
                self._fail([j.request.id for j in jobs])
                continue
            group = _Group(jobs, encoded, queued, time.perf_counter_ns() - t0)
            with self._ready_lock:
                self._ready.append(group)
                self._ready_rows += encoded.rows
            self._work.set()

    # -- the decode thread -------------------------------------------------------------------

    def _admit(self, batch: DecodeBatch, active: dict[Hashable, _Job]) -> list[_Group]:
        """Join encoded groups while the batch has rows free."""
        joined: list[_Group] = []
        rows = batch.rows
        now = time.monotonic()
        while self._ready:
            group = self._ready[0]
            if rows and rows + group.encoded.rows > self.max_rows:
                break
            with self._ready_lock:
                self._ready.popleft()
                self._ready_rows -= group.encoded.rows
            self._encode_work.set()  # room in the ready queue again
            batch.join(group.encoded)
            rows += group.encoded.rows
            late = [j for j in group.jobs if j.late(now)]  # time ran out while rows were busy
            dropped = late + [j for j in group.jobs if j.expired]  # those reported already too
            if dropped:
                batch.remove([j.request.id for j in dropped])
            if late:
                self._expire_jobs(late, now)
            active.update((j.request.id, j) for j in group.jobs if j not in dropped)
            joined.append(group)
        if joined:
            self._count_waiting()
        return joined

    def _forget(self, jobs: Sequence[_Job]) -> None:
        for job in jobs:
            if self._jobs.get(job.request.id) is job:
                del self._jobs[job.request.id]

    def _decode_thread(self) -> None:
        """Admit, step, deliver; sleep only when idle."""
        batch = self.translator.new_batch()
        active: dict[Hashable, _Job] = {}
        queued: list[int] = []  # queue times (ns) and executions not yet delivered
        executions: list[tuple[int, int, int, int]] = []  # rows, requests, input ns, infer ns
        while True:
            if not self._ready and not len(batch):
                if self._stopped:
                    return
                self._work.wait()
                self._work.clear()  # a set() after wait() returned is seen: the queue is re-read
                continue
            t0 = time.perf_counter_ns()
            try:
                joined = self._admit(batch, active)
                gone = [i for i, j in active.items() if j.cancelled]
                for i in gone:
                    del active[i]
                if gone:
                    batch.remove(gone)
                t1 = time.perf_counter_ns()
                rows = batch.rows
                updates = batch.step()
                t2 = time.perf_counter_ns()
            except Exception as exc:
                log.error("translator: decoding failed", exc_info=exc)
                failed = list(active.values())
                active.clear()
                batch = self.translator.new_batch()
                self._forget(failed)
                self._fail([j.request.id for j in failed])
                continue
            for group in joined:
                queued.extend(group.queued_ns)
            if not updates and not rows:
                continue
            self.counters[STEPS] += 1
            encode_ns = sum(g.encode_ns for g in joined)
            executions.append((rows, len(active), t1 - t0 + encode_ns, t2 - t1))
            delivered = []
            for u in updates:
                job = active.get(u.id)
                if job is None:
                    continue
                if u.finished:
                    del active[u.id]
                    self._forget([job])
                    delivered.append((u.id, u.text, u.result))
                elif u.text and job.request.stream:
                    delivered.append((u.id, u.text, None))
            if delivered or not len(batch):
                self._deliver(Delivery(delivered, queued, executions))
                queued, executions = [], []
