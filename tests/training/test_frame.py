"""CSV input: clear errors that name the row and the column, and the documented fill."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.calendar import infer_frequency
from seqserve.cli import main
from training.data.frame import CSVError, read_csv

GOOD = "date,a,b\n2021-01-01 00:00:00,1,10\n2021-01-01 01:00:00,2,20\n2021-01-01 02:00:00,3,30\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "series.csv"
    path.write_text(text)
    return path


def test_reads_a_good_file(tmp_path: Path) -> None:
    frame = read_csv(write(tmp_path, GOOD))
    assert frame.columns == ("a", "b")
    np.testing.assert_array_equal(frame.values[:, 1], [10, 20, 30])
    assert infer_frequency(frame.timestamps).alias == "h"


def test_offsets_are_converted_to_utc(tmp_path: Path) -> None:
    frame = read_csv(write(tmp_path, "date,a\n2021-01-01T02:00:00+02:00,1\n"))
    assert frame.timestamps[0] == np.datetime64("2021-01-01T00:00:00")


def test_dates_keep_their_day_whatever_the_offset(tmp_path: Path) -> None:
    """Daily stamps at +09:00 (a Seoul exchange's dates) are dates, not the day before in UTC."""
    text = "date,a\n2024-01-02T00:00:00+09:00,1\n2024-01-03T00:00:00+09:00,2\n"
    frame = read_csv(write(tmp_path, text))
    assert list(frame.timestamps) == list(np.array(["2024-01-02", "2024-01-03"], "datetime64[s]"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace(",2,20", ",,20"), "row 2, column 'a': missing value"),
        (GOOD.replace(",30", ",abc"), "row 3, column 'b': 'abc' is not a finite number"),
        (GOOD.replace(",30", ",nan"), "row 3, column 'b': 'nan' is not a finite number"),
        (GOOD.replace("2021-01-01 01:00:00", "yesterday"), "row 2, column 'date': 'yesterday'"),
        (GOOD.replace("2021-01-01 02:00:00", "2021-01-01 00:30:00"), "row 3, column 'date'"),
        (GOOD.replace(",2,20", ",2"), "row 2 has 2 cells, the header has 3"),
        (GOOD.replace("date,", "time,"), "no timestamp column 'date'"),
        ("", "empty file"),
    ],
)
def test_bad_files_name_row_and_column(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CSVError, match=message.replace("(", r"\(")):
        read_csv(write(tmp_path, text))


def test_ffill_carries_values_forward(tmp_path: Path) -> None:
    frame = read_csv(write(tmp_path, GOOD.replace(",2,20", ",,20")), fill="ffill")
    np.testing.assert_array_equal(frame.values[:, 0], [1, 1, 3])
    with pytest.raises(CSVError, match="row 1, column 'a': missing value"):
        read_csv(write(tmp_path, GOOD.replace(",1,10", ",,10")), fill="ffill")


def test_cli_reports_a_bad_csv_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write(tmp_path, GOOD.replace(",30", ",x"))
    assert main(["train", "forecaster", "--data", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "row 3, column 'b'" in err and "Traceback" not in err
