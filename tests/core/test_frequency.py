"""Frequencies as pandas offset aliases (core/calendar.py): what a user's data looks like
(business days with exchange holidays, weeks, months, quarters, years) is recognised, checked
and continued the way the field writes it."""

from __future__ import annotations

import numpy as np
import pytest

from core.calendar import Frequency, FrequencyError, frequency_of, infer_frequency


def days(*texts: str) -> np.ndarray:
    return np.array(texts, "datetime64[D]")


def business_days(first: str, last: str) -> np.ndarray:
    every = np.arange(np.datetime64(first), np.datetime64(last) + 1)
    return every[np.is_busday(every)]


def test_business_days_skip_weekends_and_the_holidays_the_rows_skip() -> None:
    rows = business_days("2024-01-02", "2024-03-29")
    rows = rows[rows != np.datetime64("2024-01-15")]  # an exchange holiday
    freq = infer_frequency(rows)
    assert freq == Frequency("B", ("2024-01-15",))
    assert freq.first_gap(rows) is None
    # the next five business days: Monday 1 April to Friday 5 April (29 March is a Friday)
    assert list(freq.following(rows[-1], 5).astype("datetime64[D]")) == list(
        days("2024-04-01", "2024-04-02", "2024-04-03", "2024-04-04", "2024-04-05")
    )
    stepping_over = Frequency("B", ("2024-01-15",)).following(np.datetime64("2024-01-12"), 1)
    assert stepping_over.astype("datetime64[D]")[0] == np.datetime64("2024-01-16")


def test_a_gap_longer_than_a_week_of_holidays_is_named() -> None:
    rows = np.concatenate([business_days("2024-01-01", "2024-01-10"), days("2024-01-22")])
    with pytest.raises(FrequencyError, match="2024-01-22") as err:
        infer_frequency(rows)
    assert err.value.index == 8
    with pytest.raises(FrequencyError, match="more than 5 missing business days") as err:
        frequency_of(rows, "B")
    assert err.value.index == 8
    daily = days("2024-01-01", "2024-01-02", "2024-01-05", "2024-01-06", "2024-01-07")
    with pytest.raises(FrequencyError, match="does not follow frequency D") as err:
        frequency_of(daily, "D")
    assert err.value.index == 2


@pytest.mark.parametrize(
    ("rows", "alias", "following"),
    [
        (days("2020-01-01", "2020-02-01", "2020-03-01"), "MS", "2020-04-01"),
        (days("2020-01-31", "2020-02-29", "2020-03-31"), "ME", "2020-04-30"),
        (days("2008-07-01", "2008-10-01", "2009-01-01"), "QS", "2009-04-01"),
        (days("2008-09-30", "2008-12-31", "2009-03-31"), "QE", "2009-06-30"),
        (days("2001-01-01", "2002-01-01", "2003-01-01"), "YS", "2004-01-01"),
        (days("2001-12-31", "2002-12-31", "2003-12-31"), "YE", "2004-12-31"),
        (days("2024-01-07", "2024-01-14", "2024-01-21"), "W-SUN", "2024-01-28"),
        (days("2024-01-05", "2024-01-12", "2024-01-19"), "W-FRI", "2024-01-26"),
        (days("2024-01-01", "2024-01-02", "2024-01-03"), "D", "2024-01-04"),
    ],
)
def test_calendar_frequencies_are_recognised_and_continued(
    rows: np.ndarray, alias: str, following: str
) -> None:
    freq = infer_frequency(rows)
    assert freq.alias == alias and freq.first_gap(rows) is None
    assert freq.following(rows[-1], 1).astype("datetime64[D]")[0] == np.datetime64(following)


def test_quarters_are_90_to_92_days_long_and_still_one_frequency() -> None:
    """statsmodels' macrodata is quarterly: its steps are not one fixed length."""
    starts = np.arange(np.datetime64("1959-01"), np.datetime64("2009-10"), 3).astype(
        "datetime64[D]"
    )
    steps = set(np.diff(starts).astype(int))
    assert steps == {90, 91, 92}
    assert infer_frequency(starts) == Frequency("QS") and Frequency("QS").fixed_ns is None


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("15min", "15min"), ("15T", "15min"), ("H", "h"), ("2h", "2h"), ("M", "ME"),
     ("Q", "QE"), ("A", "YE"), ("AS", "YS"), ("W", "W-SUN"), ("B", "B")],
)  # fmt: skip
def test_aliases_old_and_new_are_read(alias: str, canonical: str) -> None:
    assert Frequency.parse(alias).alias == canonical


@pytest.mark.parametrize("alias", ["X", "3B", "W-XYZ", "0h", ""])
def test_an_unknown_alias_is_refused_naming_the_known_ones(alias: str) -> None:
    with pytest.raises(FrequencyError, match="pandas offset alias"):
        Frequency.parse(alias)


def test_fixed_steps_keep_the_seconds_of_older_repositories() -> None:
    assert Frequency.from_seconds(3600) == Frequency("h")
    assert Frequency.from_seconds(900) == Frequency("15min")
    assert Frequency.from_seconds(86400).fixed_ns == 86_400 * 10**9
    hourly = np.arange(np.datetime64("2024-01-01T00"), np.datetime64("2024-01-02T00"))
    assert infer_frequency(hourly) == Frequency("h")


def test_off_calendar_stamps_are_named() -> None:
    assert Frequency("B").first_gap(days("2024-01-05", "2024-01-06")) == 1  # a Saturday
    assert Frequency("MS").first_gap(days("2024-01-01", "2024-02-02")) == 1
    assert Frequency("QS").first_gap(days("2024-02-01", "2024-05-01")) == 0  # not a quarter
    assert Frequency("W-SUN").first_gap(days("2024-01-07", "2024-01-15")) == 1
