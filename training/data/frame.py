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


def read_csv(path: Path, date_col: str = "date", fill: str = "none") -> Frame:
    """Read a CSV with a timestamp column and numeric columns.

    Rows are numbered as data rows (1 = the first line after the header). Empty cells are an error
    unless fill="ffill" (carry the last value forward; an empty cell in the first row is still an
    error). Cells that are not numbers are always an error.
    """
    if fill not in FILLS:
        raise CSVError(f"fill must be one of {FILLS}, not {fill!r}")
    path = Path(path)
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
    if date_col not in header:
        raise CSVError(
            f"{path}: no timestamp column {date_col!r} in the header "
            f"({', '.join(header)}); name it with --date-col"
        )
    date_at = header.index(date_col)
    columns = tuple(h for i, h in enumerate(header) if i != date_at)
    if not columns:
        raise CSVError(f"{path}: no value columns besides {date_col!r}")
    if len(set(header)) != len(header):
        raise CSVError(f"{path}: duplicate column names in the header")
    body = [r for r in rows[1:] if r]
    if not body:
        raise CSVError(f"{path}: no data rows")
    stamps: list[datetime] = []
    values = np.empty((len(body), len(columns)), dtype=np.float64)
    for row_no, row in enumerate(body, start=1):
        if len(row) != len(header):
            raise CSVError(
                f"{path}: row {row_no} has {len(row)} cells, the header has {len(header)}"
            )
        try:
            stamps.append(parse_timestamp(row[date_at]))
        except ValueError as err:
            raise CSVError(
                f"{path}: row {row_no}, column {date_col!r}: {row[date_at]!r} is not "
                "an ISO 8601 timestamp"
            ) from err
        if row_no > 1 and stamps[-1] <= stamps[-2]:
            raise CSVError(
                f"{path}: row {row_no}, column {date_col!r}: {row[date_at]!r} does "
                "not come after the previous row's timestamp (rows must be sorted, "
                "without duplicates)"
            )
        cells = [c for i, c in enumerate(row) if i != date_at]
        for col, (name, cell) in enumerate(zip(columns, cells, strict=True)):
            if cell.strip() == "":
                if fill == "ffill" and row_no > 1:
                    values[row_no - 1, col] = values[row_no - 2, col]
                    continue
                hint = (
                    " (the first row cannot be filled)"
                    if fill == "ffill"
                    else "; pass --fill ffill to carry the previous value forward"
                )
                raise CSVError(f"{path}: row {row_no}, column {name!r}: missing value{hint}")
            try:
                values[row_no - 1, col] = _number(cell)
            except ValueError as err:
                raise CSVError(
                    f"{path}: row {row_no}, column {name!r}: {cell!r} is not a finite number"
                ) from err
    return Frame(utc_timestamps(stamps), values, columns)
