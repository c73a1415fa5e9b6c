"""Calendar features of timestamps, in UTC (numpy only; training and serving share it).

Each feature is an index in 0..n-1 mapped to [-0.5, 0.5]:  value = index / (n - 1) - 0.5

    hour          hour of day         index 0..23          n = 24
    weekday       day of week         Monday = 0 .. 6      n = 7
    month         month of year       January = 0 .. 11    n = 12
    day_of_month  day of month        day - 1 (0..30)      n = 31
    day_of_year   day of year         day - 1 (0..365)     n = 366

Timestamps are numpy datetime64 values taken as UTC (naive values are UTC by convention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Index = Callable[[np.ndarray], np.ndarray]


def _days(ts: np.ndarray) -> np.ndarray:
    return ts.astype("datetime64[D]")


def _hour(ts: np.ndarray) -> np.ndarray:
    return (ts.astype("datetime64[h]") - _days(ts)).astype(np.int64)


def _weekday(ts: np.ndarray) -> np.ndarray:
    return (_days(ts).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (3)


def _month(ts: np.ndarray) -> np.ndarray:
    return ts.astype("datetime64[M]").astype(np.int64) % 12


def _day_of_month(ts: np.ndarray) -> np.ndarray:
    return (_days(ts) - ts.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64)


def _day_of_year(ts: np.ndarray) -> np.ndarray:
    return (_days(ts) - ts.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)


# name -> (index function, n)
FEATURES: dict[str, tuple[Index, int]] = {
    "hour": (_hour, 24),
    "weekday": (_weekday, 7),
    "month": (_month, 12),
    "day_of_month": (_day_of_month, 31),
    "day_of_year": (_day_of_year, 366),
}


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"unknown calendar feature {unknown[0]!r}; known: {', '.join(FEATURES)}")
    return tuple(names)


def calendar_features(timestamps: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """[N] datetime64 timestamps (UTC) -> [N, len(names)] float32 features in [-0.5, 0.5]."""
    check_names(names)
    ts = np.asarray(timestamps).astype("datetime64[s]")
    columns = [FEATURES[n][0](ts) / (FEATURES[n][1] - 1) - 0.5 for n in names]
    if not columns:
        return np.zeros((len(ts), 0), dtype=np.float32)
    return np.stack(columns, axis=-1).astype(np.float32)  # [N, F_fut]
