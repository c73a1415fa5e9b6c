"""The standard ETT split: borders, window counts, and the input-window overlap."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.splits import ett_split, ratio_split
from training.data.windows import gather, window_starts


def counts(split: object, L: int, H: int) -> list[int]:  # noqa: N803
    return [len(window_starts(*split.part(p), L, H)) for p in ("train", "val", "test")]


def test_etth_counts_and_borders() -> None:
    split = ett_split("etth1", 96, 17_420)
    assert split.train == (0, 8640)
    assert split.val == (8640 - 96, 11520)
    assert split.test == (11520 - 96, 14400)
    assert counts(split, 96, 96) == [8449, 2785, 2785]
    for H in (192, 336, 720):  # noqa: N806
        assert counts(ett_split("etth1", 96, 17_420), 96, H)[2] == 2880 - H + 1


def test_first_target_window_starts_at_the_border() -> None:
    L, H = 96, 96  # noqa: N806
    split = ett_split("etth2", L, 17_420)
    for part, border in (("val", 8640), ("test", 11520)):
        starts = window_starts(*split.part(part), L, H)
        assert starts[0] + L == border
    test = window_starts(*split.test, L, H)
    assert test[-1] + L + H == 14400  # the last window ends on the last used row


def test_ettm_counts() -> None:
    split = ett_split("ettm1", 96, 69_680)
    assert split.train == (0, 34560)
    assert counts(split, 96, 96)[2] == 11520 - 96 + 1


def test_too_short_file_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs 14400 rows"):
        ett_split("etth1", 96, 10_000)
    with pytest.raises(ValueError, match="too few for one window"):
        window_starts(0, 100, 96, 96)


def test_ratio_split_overlaps_by_the_window() -> None:
    split = ratio_split(1000, 48)
    assert split.train == (0, 700)
    assert split.val == (700 - 48, 800)
    assert split.test == (800 - 48, 1000)


def test_gather_picks_consecutive_rows() -> None:
    rows = np.arange(20)[:, None] * np.array([1, 100])  # [20, 2]
    out = gather(rows, np.array([0, 5]), 3, 4)  # [2, 4, 2]
    assert out.shape == (2, 4, 2)
    np.testing.assert_array_equal(out[1, :, 0], [8, 9, 10, 11])
