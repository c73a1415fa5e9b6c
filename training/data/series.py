"""A dataset made ready for training: columns chosen, scaled on train rows, split, windowed.

Column choice (`features`, as in the benchmark tables):
- M: every selected column in and out;  S: the target(s) in and out;  MS: all in, target(s) out.
`past_features` keep the file's column order. Scaling is fitted on the train rows only.

Many series (a long-format CSV, `--id-col`): the series are stacked row-wise, each split by time
on its own (the same shares), and windows never cross from one series into the next. The
scaling statistics pool every series' train rows; each series' own statistics are kept too, for
metrics per series.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.calendar import Frequency, FrequencyError, calendar_features, check_names, frequency_of
from training.config import TrainConfig
from training.data import synthetic
from training.data.frame import CSVError, Frame, read_csv, read_long_csv
from training.data.holiday_calendar import load_holidays
from training.data.scalers import std_scale, std_statistics
from training.data.sources import dataset_file
from training.data.splits import Split, split_for
from training.data.window_size import check_rows
from training.data.windows import fits, gather, window_starts

ETT_FILES = {
    "etth1": "ett/ETTh1.csv",
    "etth2": "ett/ETTh2.csv",
    "ettm1": "ett/ETTm1.csv",
    "ettm2": "ett/ETTm2.csv",
}
FEATURES = ("M", "S", "MS")
LONG_FORMAT_ID = "unique_id"  # StatsForecast's and NeuralForecast's column names
LONG_FORMAT_DATE = "ds"

Frames = dict[str, Frame]  # series id -> its rows; one series has the id ""


@dataclass(frozen=True)
class Series:
    """Scaled model inputs over all rows (every series stacked), with the splits and the
    column metadata."""

    source: str
    timestamps: np.ndarray  # [N] datetime64[s]
    past: np.ndarray  # [N, F_in] float32, standardised
    future: np.ndarray  # [N, F_fut] float32 calendar features
    past_features: tuple[str, ...]
    target_names: tuple[str, ...]
    future_features: tuple[str, ...]
    mean: np.ndarray  # [F_in] raw-unit statistics of the train rows (of every series)
    std: np.ndarray  # [F_in]
    splits: tuple[Split, ...]  # one per series, in stacked row numbers
    frequency: Frequency  # what the timestamps follow: a pandas offset alias, and holidays
    ids: tuple[str, ...] = ("",)  # the series' ids ("" for a single series)
    series_std: np.ndarray | None = None  # [S, F_in] each series' own train-row std (raw)

    @property
    def target_index(self) -> tuple[int, ...]:
        return tuple(self.past_features.index(t) for t in self.target_names)

    @property
    def split(self) -> Split:
        """The split of a single series."""
        if len(self.splits) != 1:
            raise ValueError(f"{self.source} holds {len(self.splits)} series, not one")
        return self.splits[0]

    def starts(self, part: str, input_len: int, horizon: int) -> np.ndarray:
        """Window starts of `part` in every series that holds one."""
        found = [
            window_starts(*split.part(part), input_len, horizon)
            for split in self.splits
            if fits(split.part(part), input_len, horizon)
        ]
        if not found:  # the error that names the rows
            window_starts(*self.splits[0].part(part), input_len, horizon)
        return np.concatenate(found)

    def series_of(self, starts: np.ndarray) -> np.ndarray:
        """[W] the series each window start belongs to."""
        firsts = np.array([split.train[0] for split in self.splits])
        return np.searchsorted(firsts, starts, side="right") - 1

    def batch(
        self, starts: np.ndarray, input_len: int, horizon: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> past [B, L, F_in], future [B, H, F_fut], target [B, H, F_out] (scaled)."""
        past = gather(self.past, starts, 0, input_len)  # [B, L, F_in]
        future = gather(self.future, starts, input_len, horizon)  # [B, H, F_fut]
        targets = self.past[:, self.target_index]  # [N, F_out]
        target = gather(targets, starts, input_len, horizon)  # [B, H, F_out]
        return past, future, target

    def own_scale(self, starts: np.ndarray) -> np.ndarray:
        """[W, F_out] factors that turn each window's model-unit targets into its own series'
        standardisation (1 for one globally standardised series): per-series metrics, and
        standardised metrics for a window-scaled model, which reads raw units."""
        t = list(self.target_index)
        if self.series_std is None:
            return np.ones((len(starts), len(t)))
        return self.std[t] / self.series_std[self.series_of(starts)][:, t]


def long_format(config: TrainConfig, path: Path) -> tuple[str, str] | None:
    """(id column, date column) of a long-format CSV, else None: `--id-col`, or a `unique_id`
    column in the header; the date column is `--date-col`, whose default gives way to `ds`
    when the header has no `date`."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError):
        header = []  # read_csv says what is wrong
    id_col = config.id_col or (LONG_FORMAT_ID if LONG_FORMAT_ID in header else "")
    if not id_col:
        return None
    default = config.date_col == "date" and "date" not in header
    return id_col, LONG_FORMAT_DATE if default else config.date_col


def load_frames(config: TrainConfig) -> Frames:
    """The raw frames behind `config.data`: a benchmark name, `synthetic`, or a CSV path (one
    series, or many in long format)."""
    name = config.data.lower()
    if name in ETT_FILES:
        return {"": read_csv(dataset_file(ETT_FILES[name]), "date", "none")}
    if name == "synthetic":
        return {"": synthetic.generate(config.synthetic_rows, config.seed)}
    path = Path(config.data)
    if not path.is_file():
        raise CSVError(
            f"--data {config.data!r} is neither a known dataset "
            f"({', '.join([*ETT_FILES, 'synthetic'])}) nor a CSV file"
        )
    if columns := long_format(config, path):
        return read_long_csv(path, *columns, config.fill)
    return {"": read_csv(path, config.date_col, config.fill)}


def choose_columns(frame: Frame, config: TrainConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """-> (past_features, target_names) for the M / S / MS setting."""
    if config.features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, not {config.features!r}")
    name = config.data.lower()
    default_target = (
        "OT"
        if name in ETT_FILES
        else (synthetic.TARGET if name == "synthetic" else frame.columns[0])
    )
    targets = tuple(config.target) or (default_target,)
    frame.column_index(targets)
    covariates = (
        tuple(c for c in frame.columns if c not in targets)
        if config.covariates is None
        else tuple(config.covariates)
    )
    frame.column_index(covariates)
    if config.features == "S":
        return targets, targets
    past = tuple(c for c in frame.columns if c in targets or c in covariates)
    return past, (past if config.features == "M" else targets)


def load(config: TrainConfig) -> tuple[Frames, Frequency]:
    """The frames behind `config.data` and the frequency their timestamps follow (`--freq`,
    else inferred; with `--holidays`' dates for business days); CSVError naming the series and
    the row that does not follow it. Many series must share the frequency; their holidays are
    the ones given and the days every series skips."""
    frames = load_frames(config)
    frequencies = {}
    for key, frame in frames.items():
        ts = frame.timestamps
        holidays = load_holidays(config.holidays, ts[0], ts[-1]) if len(ts) else ()
        try:
            frequencies[key] = frequency_of(ts, config.freq, holidays)
        except FrequencyError as err:
            row = "" if err.index is None else f"row {err.index + 1}: "  # read_csv's numbering
            of = f"series {key!r}: " if key else ""
            raise CSVError(f"{config.data}: {of}{row}{err}") from err
    example: dict[str, str] = {}  # alias -> the first series that follows it
    for key, f in frequencies.items():
        example.setdefault(f.alias, key)
    if len(example) > 1:
        found = ", ".join(f"series {key!r} {alias}" for alias, key in example.items())
        raise CSVError(
            f"{config.data}: the series follow different frequencies ({found}); name one "
            "with --freq"
        )
    shared = set.intersection(*(set(f.holidays) for f in frequencies.values()))
    return frames, Frequency(next(iter(example)), tuple(sorted(shared)))


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def prepare(
    config: TrainConfig,
    input_len: int,
    horizon: int,
    loaded: tuple[Frames, Frequency] | None = None,
    standardise: bool = True,
    note: Callable[[str], None] = _to_stderr,
) -> Series:
    """The model's view of the data. `standardise=False` keeps raw units (mean 0, std 1): a
    window-scaled model scales each window itself, and pooled statistics of series whose
    sizes differ by orders of magnitude would leave the small ones a few float32 digits.
    `note` says what was left out (training passes one that only rank 0 prints)."""
    frames, frequency = loaded or load(config)
    first = next(iter(frames.values()))
    past_features, target_names = choose_columns(first, config)
    future_features = check_names(config.future_features)
    kept, splits, offset = [], [], 0
    for key, frame in frames.items():
        if len(frames) == 1:
            check_rows(config.data, len(frame), input_len, horizon)
        split = split_for(config.data, input_len, len(frame))
        if not fits(split.train, input_len, horizon):
            continue  # too short to train on; counted below
        kept.append((key, frame))
        splits.append(Split(*((a + offset, b + offset) for a, b in (split.train, split.val,
                                                                    split.test))))  # fmt: skip
        offset += len(frame)
    if not kept:
        raise ValueError(
            f"{config.data}: none of its {len(frames)} series is long enough for one training "
            f"window of L {input_len} + H {horizon}; a shorter --input-len/--horizon"
        )
    if len(kept) < len(frames):
        note(
            f"{len(frames) - len(kept)} of {len(frames)} series are too short for one training "
            f"window of L {input_len} + H {horizon}: left out"
        )
    raw = np.concatenate([f.values[:, f.column_index(past_features)] for _, f in kept])
    train_rows = np.concatenate([raw[slice(*s.train)] for s in splits])
    mean, std = std_statistics(train_rows)
    if not standardise:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    timestamps = np.concatenate([f.timestamps for _, f in kept])
    return Series(
        source=config.data,
        timestamps=timestamps,
        past=std_scale(raw, mean, std).astype(np.float32),
        future=calendar_features(timestamps, future_features),
        past_features=past_features,
        target_names=target_names,
        future_features=future_features,
        mean=mean,
        std=std,
        splits=tuple(splits),
        frequency=frequency,
        ids=tuple(key for key, _ in kept),
        # each series' own std (for one globally standardised series, exactly `std`)
        series_std=np.stack([std_statistics(raw[slice(*s.train)])[1] for s in splits]),
    )
