"""`--holidays`: the days a business-day series skips besides weekends, known ahead of time.

Without it, the holidays are the weekdays the training rows skip (core/calendar.py), which says
nothing about the horizon: a forecast made the day before a holiday would put a value on it.
`--holidays` takes
- a file of ISO dates, one per line (blank lines and `#` comments skipped; a CSV's first column
  is read, so a `date` header is fine), or
- a calendar code of the `holidays` package: an exchange (XNYS, XKRX, XLON, ...; what a market
  series skips) or a country (US, KR, DE, ...; public holidays), for the data's years and
  YEARS_AHEAD years after them.
Weekend dates are dropped: weekends are skipped anyway. The dates are stored with the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

YEARS_AHEAD = 10  # a calendar code gives holidays this many years past the data


def load_holidays(spec: str, first: np.datetime64, last: np.datetime64) -> tuple[str, ...]:
    """`--holidays` -> sorted ISO dates (weekdays only); ValueError naming the problem."""
    if not spec:
        return ()
    path = Path(spec)
    days = _from_file(path) if path.is_file() else _from_calendar(spec, first, last)
    days = np.unique(days)
    return tuple(str(d) for d in days[np.is_busday(days)])


def _from_file(path: Path) -> np.ndarray:
    days = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].split(",", 1)[0].strip()
        if not text or (number == 1 and not text[:1].isdigit()):  # blank, comment, header
            continue
        try:
            days.append(np.datetime64(text[:10], "D"))
        except ValueError:
            raise ValueError(f"--holidays {path}: line {number}: {text!r} is not a date") from None
    return np.array(days, dtype="datetime64[D]")


def _from_calendar(code: str, first: np.datetime64, last: np.datetime64) -> np.ndarray:
    try:
        import holidays
    except ImportError:
        raise ValueError(
            f"--holidays {code!r}: not a file, and calendar codes need the `holidays` package "
            "(pip install 'seqserve[train]')"
        ) from None
    start = int(str(np.datetime64(first, "Y")))
    stop = int(str(np.datetime64(last, "Y"))) + YEARS_AHEAD
    years = range(start, stop + 1)
    name = code.strip().upper()
    if name in holidays.list_supported_financial():
        found = holidays.financial_holidays(name, years=years)
    elif name in holidays.list_supported_countries():
        found = holidays.country_holidays(name, years=years)
    else:
        raise ValueError(
            f"--holidays {code!r} is neither a file nor a calendar code of the holidays package "
            "(an exchange such as XNYS or XKRX, or a country such as US or KR)"
        )
    return np.array(sorted(found), dtype="datetime64[D]")
