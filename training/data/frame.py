"""A time series in memory, and reading one from a CSV with errors that name row and column."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from core.calendar import parse_timestamp, utc_timestamps

FILLS = ("none", "ffill")


class CSVError(ValueError):
    """A CSV that cannot be used as it is; the message names the file, row and column."""


@dataclass(frozen=True)
class Frame:
    """Rows of numeric columns on increasing UTC timestamps."""

    timestamps: np.ndarray  # [N] datetime64[s], UTC
    values: np.ndarray  # [N, C] float64
    columns: tuple[str, ...]  # C names

    def __post_init__(self) -> None:
        assert self.values.shape == (len(self.timestamps), len(self.columns)), (
            f"values {self.values.shape} vs {len(self.timestamps)} rows, "
            f"{len(self.columns)} columns"
        )

    def __len__(self) -> int:
        return len(self.timestamps)

    def column_index(self, names: tuple[str, ...]) -> list[int]:
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise CSVError(f"no column {missing[0]!r}; the columns are {', '.join(self.columns)}")
        return [self.columns.index(n) for n in names]


def _number(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(text)
    return value


def _rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the data rows of a CSV, each with its number (1 = the first data row)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise CSVError(f"{path}: cannot read: {err}") from err
    except UnicodeDecodeError as err:
        raise CSVError(f"{path}: not UTF-8 text: {err}") from err
    if not rows:
        raise CSVError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise CSVError(f"{path}: duplicate column names in the header")
    body = [(number, row) for number, row in enumerate(rows[1:], start=1) if row]
    if not body:
        raise CSVError(f"{path}: no data rows")
    for number, row in body:
        if len(row) != len(header):
            raise CSVError(
                f"{path}: row {number} has {len(row)} cells, the header has {len(header)}"
            )
    return header, body


def _column(path: Path, header: list[str], name: str, what: str, flag: str) -> int:
    if name not in header:
        raise CSVError(
            f"{path}: no {what} column {name!r} in the header ({', '.join(header)}); "
            f"name it with {flag}"
        )
    return header.index(name)


def _frame(
    path: Path, header: list[str], body: list[tuple[int, list[str]]], date_at: int, fill: str,
    skip: tuple[int, ...] = (),
) -> Frame:  # fmt: skip
    """Parse numbered rows: the timestamp at `date_at`, numbers in every column not skipped.
    Errors name the file, the row and the column."""
    date_col = header[date_at]
    keep = [i for i in range(len(header)) if i != date_at and i not in skip]
    columns = tuple(header[i] for i in keep)
    if not columns:
        raise CSVError(f"{path}: no value columns besides {date_col!r}")
    stamps: list[datetime] = []
    values = np.empty((len(body), len(columns)), dtype=np.float64)
    for k, (row_no, row) in enumerate(body):
        try:
            stamps.append(parse_timestamp(row[date_at]))
        except ValueError as err:
            raise CSVError(
                f"{path}: row {row_no}, column {date_col!r}: {row[date_at]!r} is not "
                "an ISO 8601 timestamp"
            ) from err
        if k and stamps[-1] <= stamps[-2]:
            raise CSVError(
                f"{path}: row {row_no}, column {date_col!r}: {row[date_at]!r} does "
                "not come after the previous row's timestamp (rows must be sorted, "
                "without duplicates)"
            )
        for col, i in enumerate(keep):
            cell = row[i]
            if cell.strip() == "":
                if fill == "ffill" and k:
                    values[k, col] = values[k - 1, col]
                    continue
                hint = (
                    " (the first row cannot be filled)"
                    if fill == "ffill"
                    else "; pass --fill ffill to carry the previous value forward"
                )
                raise CSVError(f"{path}: row {row_no}, column {header[i]!r}: missing value{hint}")
            try:
                values[k, col] = _number(cell)
            except ValueError as err:
                raise CSVError(
                    f"{path}: row {row_no}, column {header[i]!r}: {cell!r} is not a finite number"
                ) from err
    return Frame(utc_timestamps(stamps), values, columns)


def read_csv(path: Path, date_col: str = "date", fill: str = "none") -> Frame:
    """Read a CSV with a timestamp column and numeric columns.

    Rows are numbered as data rows (1 = the first line after the header). Empty cells are an error
    unless fill="ffill" (carry the last value forward; an empty cell in the first row is still an
    error). Cells that are not numbers are always an error.
    """
    if fill not in FILLS:
        raise CSVError(f"fill must be one of {FILLS}, not {fill!r}")
    path = Path(path)
    header, body = _rows(path)
    return _frame(
        path, header, body, _column(path, header, date_col, "timestamp", "--date-col"), fill
    )


def read_long_csv(
    path: Path, id_col: str, date_col: str = "date", fill: str = "none"
) -> dict[str, Frame]:
    """Read a long-format CSV, many series in one file (StatsForecast's `unique_id`, `ds`, `y`
    and covariate columns): series id -> its Frame, in the order the ids first appear. Each
    series' rows must be sorted by time (series may interleave); `--fill ffill` carries values
    within a series. Rows are numbered as in `read_csv`."""
    if fill not in FILLS:
        raise CSVError(f"fill must be one of {FILLS}, not {fill!r}")
    path = Path(path)
    header, body = _rows(path)
    id_at = _column(path, header, id_col, "series id", "--id-col")
    date_at = _column(path, header, date_col, "timestamp", "--date-col")
    groups: dict[str, list[tuple[int, list[str]]]] = {}
    for number, row in body:
        key = row[id_at].strip()
        if not key:
            raise CSVError(f"{path}: row {number}, column {id_col!r}: empty series id")
        groups.setdefault(key, []).append((number, row))
    return {
        key: _frame(path, header, rows, date_at, fill, skip=(id_at,))
        for key, rows in groups.items()
    }
