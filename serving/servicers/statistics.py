"""ModelStatistics messages: built from one process's `ModelStats`, and summed over the worker
processes of `seqserve serve --workers N`, so that the answer is the server's whatever worker
takes the call, and agrees with the merged /metrics."""

from __future__ import annotations

from collections.abc import Iterable

from protos.inference import grpc_service_pb2 as pb
from serving.models.base import ServedModel

INFERENCE_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_FIELDS = ("compute_input", "compute_infer", "compute_output")


def statistics_response(models: Iterable[ServedModel]) -> pb.ModelStatisticsResponse:
    """Triton's statistics of these model versions, in this process."""
    reply = pb.ModelStatisticsResponse()
    for model in models:
        s = model.statistics()
        entry = reply.model_stats.add(
            name=model.name,
            version=str(model.version),
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
        )
        for field in INFERENCE_FIELDS:
            d, out = getattr(s, field), getattr(entry.inference_stats, field)
            out.count, out.ns = d.count, d.ns
        for size in sorted(s.batches):
            b = s.batches[size]
            bs = entry.batch_stats.add(batch_size=size)
            for field in BATCH_FIELDS:
                d, out = getattr(b, field), getattr(bs, field)
                out.count, out.ns = d.count, d.ns
    return reply


def _add(total: pb.StatisticDuration, other: pb.StatisticDuration) -> None:
    total.count += other.count
    total.ns += other.ns


def add_statistics(total: pb.ModelStatisticsResponse, other: pb.ModelStatisticsResponse) -> None:
    """Add `other`'s figures into the entries of `total` for the same model and version.
    Counts and durations add up; `last_inference` is the latest. Models that only `other`
    has are left out: `total` holds the models that the request asked for."""
    entries = {(e.name, e.version): e for e in total.model_stats}
    for theirs in other.model_stats:
        ours = entries.get((theirs.name, theirs.version))
        if ours is None:
            continue
        ours.last_inference = max(ours.last_inference, theirs.last_inference)
        ours.inference_count += theirs.inference_count
        ours.execution_count += theirs.execution_count
        for field in INFERENCE_FIELDS:
            _add(getattr(ours.inference_stats, field), getattr(theirs.inference_stats, field))
        sizes: dict[int, pb.InferBatchStatistics] = {}
        for b in (*ours.batch_stats, *theirs.batch_stats):
            acc = sizes.setdefault(b.batch_size, pb.InferBatchStatistics(batch_size=b.batch_size))
            for field in BATCH_FIELDS:
                _add(getattr(acc, field), getattr(b, field))
        del ours.batch_stats[:]
        ours.batch_stats.extend(sizes[size] for size in sorted(sizes))
