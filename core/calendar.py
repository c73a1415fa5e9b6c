"""The calendar, in UTC (numpy only; training, export and serving share it): calendar features
of timestamps, and frequencies as pandas offset aliases (which timestamps a series has, and
which come next).

Each feature is an index in 0..n-1 mapped to [-0.5, 0.5]:  value = index / (n - 1) - 0.5

    hour          hour of day         index 0..23          n = 24
    weekday       day of week         Monday = 0 .. 6      n = 7
    month         month of year       January = 0 .. 11    n = 12
    day_of_month  day of month        day - 1 (0..30)      n = 31
    day_of_year   day of year         day - 1 (0..365)     n = 366

Timestamps are numpy datetime64 values taken as UTC (naive values are UTC by convention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

Index = Callable[[np.ndarray], np.ndarray]


def _days(ts: np.ndarray) -> np.ndarray:
    return ts.astype("datetime64[D]")


def _hour(ts: np.ndarray) -> np.ndarray:
    return (ts.astype("datetime64[h]") - _days(ts)).astype(np.int64)


def _weekday(ts: np.ndarray) -> np.ndarray:
    return (_days(ts).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (3)


def _month(ts: np.ndarray) -> np.ndarray:
    return ts.astype("datetime64[M]").astype(np.int64) % 12


def _day_of_month(ts: np.ndarray) -> np.ndarray:
    return (_days(ts) - ts.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64)


def _day_of_year(ts: np.ndarray) -> np.ndarray:
    return (_days(ts) - ts.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)


# name -> (index function, n)
FEATURES: dict[str, tuple[Index, int]] = {
    "hour": (_hour, 24),
    "weekday": (_weekday, 7),
    "month": (_month, 12),
    "day_of_month": (_day_of_month, 31),
    "day_of_year": (_day_of_year, 366),
}


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"unknown calendar feature {unknown[0]!r}; known: {', '.join(FEATURES)}")
    return tuple(names)


def calendar_features(timestamps: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """[N] datetime64 timestamps (UTC) -> [N, len(names)] float32 features in [-0.5, 0.5]."""
    check_names(names)
    ts = np.asarray(timestamps).astype("datetime64[s]")
    columns = [FEATURES[n][0](ts) / (FEATURES[n][1] - 1) - 0.5 for n in names]
    if not columns:
        return np.zeros((len(ts), 0), dtype=np.float32)
    return np.stack(columns, axis=-1).astype(np.float32)  # [N, F_fut]


# Frequencies -----------------------------------------------------------------------------
# pandas offset aliases (https://pandas.pydata.org/docs/user_guide/timeseries.html#offset-aliases)
# in numpy alone: fixed steps ("15min", "h", "D"), business days ("B", with holidays), weeks
# anchored on a weekday ("W-SUN"), and month, quarter and year starts and ends ("MS", "ME",
# "QS", "QE", "YS", "YE"; quarters on the calendar's, Jan/Apr/Jul/Oct). Older spellings are
# read too: "H", "T", "S", "M", "Q", "A", "Y", "AS", "W".

DAY_NS = 86_400 * 10**9
_UNITS = {"s": 10**9, "min": 60 * 10**9, "h": 3600 * 10**9, "D": DAY_NS}
_OLD = {"S": "s", "T": "min", "H": "h", "M": "ME", "Q": "QE", "A": "YE", "Y": "YE", "AS": "YS",
        "W": "W-SUN"}  # fmt: skip
WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
# alias -> (months per step, start of the period)
_MONTHLY = {"MS": (1, True), "ME": (1, False), "QS": (3, True), "QE": (3, False),
            "YS": (12, True), "YE": (12, False)}  # fmt: skip
# A run of missing weekdays this long or shorter is holidays (a week of them: Golden Week,
# Chuseok, the days around Christmas); a longer one is a gap in the data.
MAX_HOLIDAY_RUN = 5


class FrequencyError(ValueError):
    """A frequency alias that is not one, or timestamps that do not follow their frequency;
    `index` is the position of the first timestamp that does not (0 = the first)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def _ns(ts: np.ndarray) -> np.ndarray:
    return np.asarray(ts).astype("datetime64[ns]")


def _count_and_unit(alias: str) -> tuple[int, str]:
    """ "15min" -> (15, "min"); "h" -> (1, "h")."""
    digits = len(alias) - len(alias.lstrip("0123456789"))
    return (int(alias[:digits]) if digits else 1), alias[digits:]


@dataclass(frozen=True)
class Frequency:
    """A series' frequency as a pandas offset alias; `holidays` (ISO dates) are the weekdays
    a business-day ("B") series skips besides weekends."""

    alias: str
    holidays: tuple[str, ...] = ()

    @classmethod
    def parse(cls, alias: str, holidays: Sequence[str] = ()) -> Frequency:
        """A canonical Frequency from an alias ("15min", "h", "B", "W-FRI", "QS", ...)."""
        text = alias.strip()
        count, unit = _count_and_unit(text)
        bare = not text[:1].isdigit()  # no count written
        unit = _OLD.get(unit, unit)
        if unit in _UNITS and count >= 1:
            canonical = unit if count == 1 else f"{count}{unit}"
        elif bare and (unit in _MONTHLY or unit == "B"):
            canonical = unit
        elif bare and unit.startswith("W-") and unit[2:] in WEEKDAYS:
            canonical = unit
        else:
            raise FrequencyError(
                f"unknown frequency {alias!r}: a pandas offset alias such as 15min, h, D, B, "
                "W-SUN, MS, ME, QS, QE, YS or YE"
            )
        if holidays and canonical != "B":
            raise FrequencyError(f"holidays are for business-day series (B), not {canonical}")
        days = np.array(sorted(set(holidays)), dtype="datetime64[D]")
        return cls(canonical, tuple(str(d) for d in days))

    @classmethod
    def from_seconds(cls, seconds: float) -> Frequency:
        """A fixed step in seconds (the `frequency_seconds` of older repositories)."""
        step = round(seconds * 10**9)
        for unit in ("D", "h", "min", "s"):
            if step % _UNITS[unit] == 0:
                return cls.parse(f"{step // _UNITS[unit]}{unit}")
        raise FrequencyError(f"a step of {seconds} s is not a whole number of seconds")

    @property
    def fixed_ns(self) -> int | None:
        """The step in nanoseconds when every step is the same length, else None."""
        count, unit = _count_and_unit(self.alias)
        if unit in _UNITS:
            return count * _UNITS[unit]
        if unit.startswith("W-"):
            return 7 * DAY_NS
        return None

    def advance(self, ts: np.ndarray, k: int | np.ndarray) -> np.ndarray:
        """Each timestamp moved k steps on ([N] datetime64 -> [N] datetime64[ns]); the time of
        day is kept for business days, weeks, months, quarters and years."""
        ts = _ns(ts)
        if (step := self.fixed_ns) is not None:
            return ts + np.asarray(k, np.int64) * np.timedelta64(step, "ns")
        days = ts.astype("datetime64[D]")
        time_of_day = ts - days
        if self.alias == "B":
            following = np.busday_offset(days, k, roll="forward", holidays=list(self.holidays))
            return _ns(following) + time_of_day
        months, start = _MONTHLY[self.alias]
        month = ts.astype("datetime64[M]") + np.asarray(k, np.int64) * months
        if start:
            return _ns(month.astype("datetime64[D]")) + time_of_day
        return _ns((month + 1).astype("datetime64[D]") - 1) + time_of_day

    def following(self, last: np.datetime64, n: int) -> np.ndarray:
        """The n timestamps after `last` ([n] datetime64[ns])."""
        return self.advance(np.full(n, _ns(last)), np.arange(1, n + 1))

    def off_calendar(self, ts: np.ndarray) -> np.ndarray:
        """[N] bool: the timestamps that are not on this frequency's calendar (a Saturday for
        "B", a Tuesday for "W-SUN", the 2nd for "MS", a holiday)."""
        ts = _ns(ts)
        if self.alias == "B":
            return ~np.is_busday(ts.astype("datetime64[D]"), holidays=list(self.holidays))
        if self.alias.startswith("W-"):
            return _weekday(ts) != WEEKDAYS.index(self.alias[2:])
        if self.alias in _MONTHLY:
            months, start = _MONTHLY[self.alias]
            month = ts.astype("datetime64[M]")
            edge = (
                month.astype("datetime64[D]") if start else (month + 1).astype("datetime64[D]") - 1
            )
            in_cycle = (month.astype(np.int64) % 12) % months == (0 if start else months - 1)
            return (ts.astype("datetime64[D]") != edge) | ~in_cycle
        return np.zeros(len(ts), bool)  # a fixed step: any instant is on it

    def first_gap(self, ts: np.ndarray) -> int | None:
        """The index of the first timestamp that is off the calendar or not the step after
        the one before it (a gap, a repeat, a step back), else None."""
        ts = _ns(ts)
        off = self.off_calendar(ts)
        if off.any():
            return int(np.argmax(off))
        if len(ts) < 2:
            return None
        wrong = self.advance(ts[:-1], 1) != ts[1:]
        return int(np.argmax(wrong)) + 1 if wrong.any() else None

    @property
    def season(self) -> int | None:
        """Steps in one natural cycle, for a seasonal-naive baseline: a day of sub-daily
        steps, a week of days (5 business days), a year of weeks, months or quarters; None
        when there is none (years, steps that do not divide a day)."""
        if (step := self.fixed_ns) is not None:
            if self.alias.startswith("W-"):
                return 52
            if step < DAY_NS and DAY_NS % step == 0:
                return DAY_NS // step
            return 7 if step == DAY_NS else None
        return {"B": 5, "MS": 12, "ME": 12, "QS": 4, "QE": 4}.get(self.alias)

    def checked(self, ts: np.ndarray) -> Frequency:
        """This frequency, checked against timestamps; for business days the weekdays they
        skip become holidays too (`business_days`). FrequencyError, with the index, naming the
        first timestamp that does not follow it."""
        ts = _ns(ts)
        freq = self
        if self.alias == "B" and len(ts) and not self.off_calendar(ts).any():
            freq = business_days(ts, self.holidays)
        if (i := freq.first_gap(ts)) is not None:
            day = str(ts[i].astype("datetime64[D]"))
            if day in self.holidays:
                raise FrequencyError(
                    f"{day} has a row but is one of the holidays given; give the holidays "
                    "the series skips (an exchange calendar such as XNYS or XKRX rather than a "
                    "country's public holidays, or a file of dates)",
                    i,
                )
            after = f" after {ts[i - 1].astype('datetime64[s]')}" if i else ""
            raise FrequencyError(
                f"{ts[i].astype('datetime64[s]')}{after} does not follow frequency {freq.alias}", i
            )
        return freq


def infer_frequency(ts: np.ndarray) -> Frequency:
    """The frequency timestamps follow, as a pandas offset alias. Business days whose rows
    skip a few weekdays (exchange holidays) are "B" with those weekdays as holidays.
    FrequencyError, naming the rows, when they follow none."""
    ts = _ns(ts)
    if len(ts) < 3:
        raise FrequencyError(f"{len(ts)} timestamps are too few to tell their frequency")
    steps = np.diff(ts.astype(np.int64))
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0)) + 1
        raise FrequencyError(f"{ts[i].astype('datetime64[s]')} does not come after the "
                             "timestamp before it", i)  # fmt: skip
    equal = bool((steps == steps[0]).all())
    if equal and steps[0] < 28 * DAY_NS:  # shorter than any month: a fixed step, or a week
        if steps[0] == 7 * DAY_NS:
            return Frequency(f"W-{WEEKDAYS[int(_weekday(ts[:1])[0])]}")
        return Frequency.from_seconds(int(steps[0]) / 10**9)
    candidates = [Frequency(alias) for alias in _MONTHLY]
    days = ts.astype("datetime64[D]")
    on_weekdays = bool((ts - days == ts[0] - days[0]).all() and np.is_busday(days).all())
    if on_weekdays:
        try:
            candidates.insert(0, business_days(ts))
        except FrequencyError:
            pass
    for freq in candidates:
        if freq.first_gap(ts) is None:
            return freq
    if equal:  # 30 days, say: not a month
        return Frequency.from_seconds(int(steps[0]) / 10**9)
    if on_weekdays:  # business days with a gap: say where
        business_days(ts)
    counts = np.unique(steps, return_counts=True)
    common = counts[0][np.argmax(counts[1])]
    i = int(np.argmax(steps != common)) + 1
    raise FrequencyError(
        f"the timestamps follow no frequency: most steps are {common / 1e9:g} s, but "
        f"{ts[i].astype('datetime64[s]')} comes {steps[i - 1] / 1e9:g} s after the one "
        "before it; name the frequency (a pandas offset alias such as B, W-SUN, MS or QS)",
        i,
    )


def business_days(ts: np.ndarray, holidays: Sequence[str] = ()) -> Frequency:
    """The business-day frequency of timestamps on weekdays: the weekdays they skip are
    holidays too, besides `holidays`, when no run of them is longer than MAX_HOLIDAY_RUN.
    FrequencyError naming the timestamp after a longer gap."""
    days = _ns(ts).astype("datetime64[D]")
    every = np.arange(days[0], days[-1] + 1, dtype="datetime64[D]")
    known = np.array(sorted(set(holidays)), dtype="datetime64[D]")
    open_days = every[np.is_busday(every, holidays=known)]
    present = np.isin(open_days, days)
    # the length of the run of missing days that ends at each open day
    run = np.zeros(len(open_days), np.int64)
    for i in np.flatnonzero(~present):
        run[i] = (run[i - 1] if i else 0) + 1
    if run.max(initial=0) > MAX_HOLIDAY_RUN:
        end = int(np.argmax(run > MAX_HOLIDAY_RUN))
        after = open_days[end:][present[end:]]
        i = int(np.searchsorted(days, after[0])) if len(after) else len(days) - 1
        raise FrequencyError(
            f"{days[i]} comes after more than {MAX_HOLIDAY_RUN} missing business days", i
        )
    skipped = open_days[~present]
    return Frequency("B", tuple(str(d) for d in np.union1d(known, skipped)))


def frequency_of(ts: np.ndarray, alias: str = "", holidays: Sequence[str] = ()) -> Frequency:
    """The frequency of a series' timestamps: `alias` when given, checked against them, else
    inferred. For business days, `holidays` (ISO dates, which may run past the data) are
    skipped, and so are the weekdays the timestamps skip. FrequencyError naming the first
    timestamp that does not follow it."""
    if not alias and not holidays:
        return infer_frequency(ts)
    return Frequency.parse(alias or infer_frequency(ts).alias, holidays).checked(ts)


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 (a trailing Z too), aware; a naive time is UTC. `utc_timestamps` turns a
    column of them into UTC, keeping dates (daily and coarser data) on their day."""
    stamp = datetime.fromisoformat(text.strip())
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


def utc_timestamps(stamps: Sequence[datetime]) -> np.ndarray:
    """Parsed timestamps -> [N] datetime64[s] in UTC; naive ones are UTC. When every stamp is a
    local midnight (daily or coarser data: dates), each keeps the date it was written with: a
    daily stamp at +09:00 stays on its day instead of becoming the day before in UTC."""
    if all(s.hour == s.minute == s.second == s.microsecond == 0 for s in stamps):
        return np.array([s.replace(tzinfo=None) for s in stamps], dtype="datetime64[s]")
    return np.array(
        [(s.astimezone(UTC) if s.tzinfo else s).replace(tzinfo=None) for s in stamps],
        dtype="datetime64[s]",
    )
