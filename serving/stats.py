"""Cumulative per-model-version statistics: the one source for ModelStatistics and for the
Triton-named Prometheus series, so the two always agree. Updated on the event loop and, for the
native front end's fast path, from its instance threads: every update takes the stats' lock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

from core.errors import FailureReason


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Triton's statistics for one model version (durations in nanoseconds)."""

    success: Duration = field(default_factory=Duration)  # end-to-end time of good requests
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # batch elements inferred
    execution_count: int = 0  # model executions (batches)
    last_inference_ms: int = 0
    pending: int = 0  # requests received and not yet answered
    failures: dict[FailureReason, int] = field(
        default_factory=lambda: dict.fromkeys(FailureReason, 0)
    )
    batches: dict[int, BatchStats] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> ModelStats:
        """A consistent copy, taken under the lock: readers (/metrics, ModelStatistics) run on
        other threads than the fast path's instance threads, which insert batch sizes."""
        with self.lock:
            return ModelStats(
                success=replace(self.success),
                fail=replace(self.fail),
                queue=replace(self.queue),
                compute_input=replace(self.compute_input),
                compute_infer=replace(self.compute_infer),
                compute_output=replace(self.compute_output),
                inference_count=self.inference_count,
                execution_count=self.execution_count,
                last_inference_ms=self.last_inference_ms,
                pending=self.pending,
                failures=dict(self.failures),
                batches={
                    size: BatchStats(
                        replace(b.compute_input),
                        replace(b.compute_infer),
                        replace(b.compute_output),
                    )
                    for size, b in self.batches.items()
                },
            )

    def record_execution(
        self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One model execution of `batch_size` elements from `requests` requests."""
        with self.lock:
            self._record_execution(batch_size, requests, input_ns, infer_ns, output_ns)

    def _record_execution(
        self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        self.execution_count += 1
        self.inference_count += batch_size
        self.last_inference_ms = time.time_ns() // 1_000_000
        # Triton counts per-request compute durations: each request of the batch is charged.
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        b = self.batches.setdefault(batch_size, BatchStats())
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)

    def record_batch(
        self,
        queue_ns: list[int],
        batch_size: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        durations_ns: list[int],
    ) -> None:
        """A whole batch of successful requests at once: their queue times, the execution,
        their end-to-end times (the native front end's one call per batch)."""
        with self.lock:
            for ns in queue_ns:
                self.queue.add(ns)
            self._record_execution(batch_size, len(queue_ns), input_ns, infer_ns, output_ns)
            for ns in durations_ns:
                self.success.add(ns)

    def record_queue(self, ns: int) -> None:
        with self.lock:
            self.queue.add(ns)

    def add_pending(self, n: int) -> None:
        with self.lock:
            self.pending += n

    def record_success(self, ns: int) -> None:
        with self.lock:
            self.success.add(ns)

    def record_failure(self, ns: int, reason: FailureReason) -> None:
        self.record_failures(1, ns, reason)

    def record_failures(self, count: int, ns: int, reason: FailureReason) -> None:
        """`count` failed requests that took `ns` in all."""
        with self.lock:
            self.fail.add(ns, count)
            self.failures[reason] += count
