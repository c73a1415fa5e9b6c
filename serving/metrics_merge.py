"""One /metrics for many worker processes: their Prometheus text expositions merged into one.

Series with the same name and labels are combined, so a server with `--workers N` looks to
Prometheus like one server (Triton's dashboards and seqserve's rules work unchanged):

- counters, histogram buckets, sums and counts, and gauges of amounts (pending requests, queue
  size and capacity, memory, open descriptors): summed over the workers;
- `seqserve_model_ready`: the minimum (a model is ready when every worker has it ready);
- creation times and the process start time: the minimum (the oldest);
- constants (`process_max_fds`, `python_info`): the maximum.

HELP and TYPE lines are kept once, families and samples in the order first seen. A series that
only some workers have is combined over those that have it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.utils import floatToGoString

MIN_SERIES = ("seqserve_model_ready", "process_start_time_seconds")
MAX_SERIES = ("process_max_fds", "python_info")


def _combine(name: str) -> Callable[[float, float], float]:
    if name in MIN_SERIES or name.endswith("_created"):
        return min
    if name in MAX_SERIES:
        return max
    return lambda a, b: a + b


def _split(line: str) -> tuple[str, str, float]:
    """`name{labels} value` -> (name, series key, value). Exposition lines written by
    prometheus-client and seqserve carry no timestamps."""
    key, _, value = line.rpartition(" ")
    name = key.split("{", 1)[0]
    return name, key, float(value)


def merge(expositions: Iterable[str]) -> str:
    """Prometheus text expositions (one per worker) -> one exposition."""
    families: dict[str, list[str]] = {}  # family -> its HELP/TYPE lines
    series: dict[str, dict[str, float]] = {}  # family -> series key -> value
    for text in expositions:
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    comments = families.setdefault(family, [])
                    if not any(c.split(None, 2)[1] == parts[1] for c in comments):
                        comments.append(line)
                    series.setdefault(family, {})
                continue
            name, key, value = _split(line)
            samples = series.setdefault(family or name, {})
            samples[key] = _combine(name)(samples[key], value) if key in samples else value
    out: list[str] = []
    for family, samples in series.items():
        out.extend(families.get(family, []))
        out.extend(f"{key} {floatToGoString(value)}" for key, value in samples.items())
    return "\n".join(out) + "\n"
