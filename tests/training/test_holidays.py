"""`--holidays`: an exchange calendar, a country or a file of dates gives a business-day model
the holidays of its horizon too, not only the ones its rows skipped; bad holidays get an error
that names the date, the line or the code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from training.config import TrainConfig
from training.data.frame import CSVError
from training.data.holiday_calendar import load_holidays
from training.data.series import load

# New York Stock Exchange closures on weekdays, 2023 to the end of March 2024 (from its calendar)
NYSE = (
    "2023-01-02", "2023-01-16", "2023-02-20", "2023-04-07", "2023-05-29", "2023-06-19",
    "2023-07-04", "2023-09-04", "2023-11-23", "2023-12-25", "2024-01-01", "2024-01-15",
    "2024-02-19", "2024-03-29",
)  # fmt: skip


def business_csv(path: Path, skipped: tuple[str, ...], on: tuple[str, ...] = ()) -> Path:
    every = np.arange(np.datetime64("2023-01-02"), np.datetime64("2024-03-28") + 1)
    days = every[np.is_busday(every, holidays=[d for d in skipped if d not in on])]
    values = np.cumsum(np.random.default_rng(0).standard_normal(len(days)))
    path.write_text(
        "date,close\n" + "".join(f"{d},{v:.3f}\n" for d, v in zip(days, values, strict=True))
    )
    return path


def test_an_exchange_calendar_gives_the_holidays_past_the_data(tmp_path: Path) -> None:
    csv = business_csv(tmp_path / "nyse.csv", NYSE)
    _, frequency = load(TrainConfig(data=str(csv), holidays="XNYS"))
    assert frequency.alias == "B"
    assert set(NYSE) <= set(frequency.holidays)
    # the horizon after Thursday 2024-03-28 skips Good Friday and the weekend; July 4th and
    # Christmas 2025 are there, years past the data
    after = frequency.following(np.datetime64("2024-03-28"), 2).astype("datetime64[D]")
    assert [str(d) for d in after] == ["2024-04-01", "2024-04-02"]
    assert {"2025-07-04", "2025-12-25", "2030-12-25"} <= set(frequency.holidays)
    # without --holidays, only the skipped days are known: the horizon lands on Good Friday
    _, inferred = load(TrainConfig(data=str(csv)))
    assert inferred.holidays == NYSE[1:-1]  # the data starts after New Year's, ends before Easter
    first = inferred.following(np.datetime64("2024-03-28"), 1).astype("datetime64[D]")
    assert str(first[0]) == "2024-03-29"


def test_a_file_of_dates_and_the_skipped_days_together(tmp_path: Path) -> None:
    listed = tmp_path / "closed.csv"
    listed.write_text("date\n# the exchange's 2024 list\n2024-03-29\n2024-12-25, Christmas\n")
    csv = business_csv(tmp_path / "s.csv", NYSE)
    _, frequency = load(TrainConfig(data=str(csv), holidays=str(listed)))
    # the rows' gaps are holidays too; the file adds the ones after the data
    assert frequency.holidays == (*NYSE[1:], "2024-12-25")


def test_a_row_on_a_listed_holiday_is_named(tmp_path: Path) -> None:
    """Public holidays are not what an exchange skips: NYSE trades on Columbus Day."""
    csv = business_csv(tmp_path / "s.csv", NYSE)
    with pytest.raises(CSVError, match=r"2023-10-09 has a row but is one of the holidays"):
        load(TrainConfig(data=str(csv), holidays="US"))


def test_bad_holidays_get_clear_errors(tmp_path: Path) -> None:
    first, last = np.datetime64("2023-01-02"), np.datetime64("2023-12-29")
    with pytest.raises(ValueError, match=r"'XXNOPE' is neither a file nor a calendar code"):
        load_holidays("XXNOPE", first, last)
    bad = tmp_path / "bad.txt"
    bad.write_text("2024-01-01\nnot a day\n")
    with pytest.raises(ValueError, match=r"line 2: 'not a day' is not a date"):
        load_holidays(str(bad), first, last)
    good = tmp_path / "good.txt"
    good.write_text("2024-01-01\n")
    hourly = tmp_path / "h.csv"
    hourly.write_text("date,y\n" + "".join(f"2024-01-01T{h:02d}:00:00,{h}\n" for h in range(24)))
    with pytest.raises(CSVError, match=r"holidays are for business-day series \(B\), not h"):
        load(replace(TrainConfig(data=str(hourly)), holidays=str(good)))


def test_weekend_dates_are_dropped(tmp_path: Path) -> None:
    listed = tmp_path / "ok.txt"
    listed.write_text("2024-01-06\n2024-01-08\n")  # a Saturday, a Monday
    first = np.datetime64("2024-01-01")
    assert load_holidays(str(listed), first, first) == ("2024-01-08",)
