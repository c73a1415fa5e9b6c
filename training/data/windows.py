"""Sliding windows over a row range, stride 1, kept as start indices (no copies until a batch).

A window starting at row s has its input rows [s, s + L) and its target rows [s + L, s + L + H).
"""

from __future__ import annotations

import numpy as np


def fits(rows: tuple[int, int], input_len: int, horizon: int) -> bool:
    """Whether the row range [start, stop) holds at least one window."""
    return rows[1] - rows[0] >= input_len + horizon


def window_starts(start: int, stop: int, input_len: int, horizon: int) -> np.ndarray:
    """Start rows of every window inside [start, stop): len(slice) - L - H + 1 of them."""
    count = (stop - start) - input_len - horizon + 1
    if count < 1:
        raise ValueError(
            f"rows [{start}, {stop}) are too few for one window of {input_len} + {horizon} steps"
        )
    return np.arange(start, start + count)


def gather(array: np.ndarray, starts: np.ndarray, offset: int, length: int) -> np.ndarray:
    """[N, F] rows -> [W, length, F]: rows [s + offset, s + offset + length) for each start s."""
    rows = starts[:, None] + offset + np.arange(length)  # [W, length]
    return array[rows]  # [W, length, F]
