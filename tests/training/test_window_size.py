"""Window sizes left to the data (training/data/window_size.py): the benchmark's on ETT,
something that fits on short and coarse series, and one clear error when nothing fits."""

from __future__ import annotations

import pytest

from core.calendar import Frequency
from training.config import ForecasterConfig
from training.data.window_size import check_rows, resolve


def sizes(data: str, rows: int, alias: str, **given: int) -> tuple[int, int, int]:
    model = resolve(ForecasterConfig(**given), data, rows, Frequency.parse(alias))
    return model.input_len, model.horizon, model.seg_len


def test_ett_keeps_the_benchmark_window() -> None:
    assert sizes("etth1", 17420, "h") == (96, 96, 24)
    assert sizes("ettm1", 69680, "15min") == (96, 96, 24)
    assert sizes("etth1", 17420, "h", horizon=336) == (96, 336, 24)  # the long-horizon table
    assert sizes("synthetic", 17520, "h") == (96, 96, 24)  # the default repository's


@pytest.mark.parametrize(
    ("rows", "alias", "expected"),
    [
        (203, "QE", (32, 4, 4)),  # statsmodels' macrodata: 203 quarters
        (300, "B", (50, 5, 5)),  # a year and a bit of business days
        (150, "MS", (18, 12, 6)),  # monthly: 105 training rows
        (120, "W-SUN", (16, 8, 8)),  # weekly
    ],
)
def test_short_coarse_series_get_a_window_that_fits(
    rows: int, alias: str, expected: tuple[int, int, int]
) -> None:
    L, H, seg = sizes("my.csv", rows, alias)  # noqa: N806
    assert (L, H, seg) == expected
    check_rows("my.csv", rows, L, H)  # and it fits


def test_given_sizes_are_kept_and_the_segment_follows_them() -> None:
    assert sizes("my.csv", 5000, "h", input_len=48, horizon=24) == (48, 24, 24)
    assert sizes("my.csv", 5000, "h", horizon=4) == (96, 4, 4)  # `--horizon 4` alone works
    assert sizes("my.csv", 5000, "h", input_len=30, horizon=20) == (30, 20, 10)


def test_too_little_data_names_the_split_and_the_rows_needed() -> None:
    with pytest.raises(ValueError, match=r"the train split has 35 rows and needs at least 192"):
        check_rows("my.csv", 50, 96, 96)
    with pytest.raises(ValueError, match=r"the val split has 2 rows and needs at least 4"):
        check_rows("my.csv", 20, 8, 4)
