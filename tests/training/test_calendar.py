"""Calendar features: value = index / (n - 1) - 0.5, in UTC, against Python's datetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from core.calendar import FEATURES, calendar_features

NAMES = list(FEATURES)


def expected(stamp: datetime) -> list[float]:
    index = {
        "hour": (stamp.hour, 24),
        "weekday": (stamp.weekday(), 7),
        "month": (stamp.month - 1, 12),
        "day_of_month": (stamp.day - 1, 31),
        "day_of_year": (stamp.timetuple().tm_yday - 1, 366),
    }
    return [index[n][0] / (index[n][1] - 1) - 0.5 for n in NAMES]


def test_ends_of_the_ranges() -> None:
    stamps = np.array(["2024-01-01T00:00", "2024-12-31T23:00"], dtype="datetime64[s]")
    got = calendar_features(stamps, NAMES)  # Monday; Tuesday of a leap year
    assert got.dtype == np.float32 and got.shape == (2, 5)
    np.testing.assert_allclose(got[0], [-0.5] * 5)
    np.testing.assert_allclose(got[1], [0.5, 1 / 6 - 0.5, 0.5, 0.5, 0.5], atol=1e-7)


def test_matches_datetime_on_random_times() -> None:
    rng = np.random.default_rng(0)
    start = datetime(1999, 1, 1, tzinfo=UTC)
    stamps = [start + timedelta(seconds=int(s)) for s in rng.integers(0, 40 * 365 * 86400, 500)]
    got = calendar_features(
        np.array([s.replace(tzinfo=None) for s in stamps], dtype="datetime64[s]"), NAMES
    )
    np.testing.assert_allclose(got, np.array([expected(s) for s in stamps]), atol=1e-6)


def test_order_follows_the_names_and_empty_is_allowed() -> None:
    stamps = np.array(["2021-03-05T13:30"], dtype="datetime64[s]")  # a Friday
    np.testing.assert_allclose(
        calendar_features(stamps, ["weekday", "hour"]), [[4 / 6 - 0.5, 13 / 23 - 0.5]], atol=1e-7
    )
    assert calendar_features(stamps, []).shape == (1, 0)


def test_unknown_feature_is_named() -> None:
    with pytest.raises(ValueError, match="'minute'"):
        calendar_features(np.array(["2021-01-01"], dtype="datetime64[s]"), ["minute"])
