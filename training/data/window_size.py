"""The window a forecaster reads and writes when the user leaves it to the data (0 in the
config): the horizon H from the frequency, the input length L from H and the rows the training
split holds, SegRNN's segment length from both; and the rows each split needs, with an error
that says so. On ETT this gives the benchmark's 96 -> 96 with segments of 24."""

from __future__ import annotations

import math
from dataclasses import replace

from core.calendar import DAY_NS, Frequency
from training.config import ForecasterConfig
from training.data.splits import TEST_SHARE, TRAIN_SHARE, split_for

MAX_INPUT = 96  # L at most, the benchmark's
MAX_SEGMENT = 24  # the benchmark's segment length
WINDOWS_PER_INPUT = 4  # the training split holds at least this many L-long stretches
# H by frequency: four days of hours, a day of 15 minutes, two weeks of days, a week of
# business days, two months of weeks, a year of months, a year of quarters, two years.
HORIZON = {"B": 5, "MS": 12, "ME": 12, "QS": 4, "QE": 4, "YS": 2, "YE": 2}


def default_horizon(freq: Frequency) -> int:
    if freq.alias in HORIZON:
        return HORIZON[freq.alias]
    if freq.alias.startswith("W-"):
        return 8
    return 96 if (freq.fixed_ns or 0) < DAY_NS else 14  # every other alias is a fixed step


def split_rows(data: str, n_rows: int) -> dict[str, int]:
    """Rows of each split of `data` (training/data/splits.py) before the input-window
    overlap."""
    split = split_for(data, 0, n_rows)
    rows = {}
    for part in ("train", "val", "test"):
        start, stop = split.part(part)
        rows[part] = stop - start
    return rows


def check_rows(data: str, n_rows: int, input_len: int, horizon: int) -> None:
    """ValueError naming the split that cannot hold one window, and the rows needed."""
    rows = split_rows(data, n_rows)
    need = {"train": input_len + horizon, "val": horizon, "test": horizon}
    short = [part for part in ("train", "val", "test") if rows[part] < need[part]]
    if short:
        part = short[0]
        val_share = 1 - TRAIN_SHARE - TEST_SHARE
        total = max(
            math.ceil(need["train"] / TRAIN_SHARE),
            math.ceil(horizon / val_share),
            math.ceil(horizon / TEST_SHARE),
        )
        raise ValueError(
            f"{data}: {n_rows} rows are too few: the {part} split has {rows[part]} rows and "
            f"needs at least {need[part]} for windows of L {input_len} + H {horizon} (val and "
            f"test reuse the L rows before them); about {total} rows would do, or a shorter "
            "--input-len/--horizon"
        )


def resolve(model: ForecasterConfig, data: str, n_rows: int, freq: Frequency) -> ForecasterConfig:
    """`model` with every window size left at 0 chosen; the sizes given are kept."""
    rows = split_rows(data, n_rows)
    horizon = model.horizon or max(1, min(default_horizon(freq), rows["val"], rows["test"]))
    input_len = model.input_len
    if not input_len:
        most = max(1, min(MAX_INPUT, (rows["train"] - horizon) // WINDOWS_PER_INPUT))
        # a multiple of H, or of H's largest divisor that fits twice: segments then divide both
        step = model.seg_len or max(d for d in range(1, horizon + 1) if horizon % d == 0
                                    and d <= max(1, most // 2))  # fmt: skip
        input_len = max(most - most % step, min(step, most))
    seg_len = model.seg_len
    if not seg_len:
        common = math.gcd(input_len, horizon)
        seg_len = max(d for d in range(1, min(common, MAX_SEGMENT) + 1) if common % d == 0)
    return replace(model, input_len=input_len, horizon=horizon, seg_len=seg_len)
