"""A dataset made ready for training: columns chosen, scaled on train rows, split, windowed.

Column choice (`features`, as in the benchmark tables):
- M: every selected column in and out;  S: the target(s) in and out;  MS: all in, target(s) out.
`past_features` keep the file's column order. Scaling is fitted on the train rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.calendar import Frequency, FrequencyError, calendar_features, check_names, frequency_of
from training.config import TrainConfig
from training.data import synthetic
from training.data.frame import CSVError, Frame, read_csv
from training.data.holiday_calendar import load_holidays
from training.data.scalers import std_scale, std_statistics
from training.data.sources import dataset_file
from training.data.splits import Split, split_for
from training.data.window_size import check_rows
from training.data.windows import gather, window_starts

ETT_FILES = {
    "etth1": "ett/ETTh1.csv",
    "etth2": "ett/ETTh2.csv",
    "ettm1": "ett/ETTm1.csv",
    "ettm2": "ett/ETTm2.csv",
}
FEATURES = ("M", "S", "MS")


@dataclass(frozen=True)
class Series:
    """Scaled model inputs over all rows, with the split and the column metadata."""

    source: str
    timestamps: np.ndarray  # [N] datetime64[s]
    past: np.ndarray  # [N, F_in] float32, standardised
    future: np.ndarray  # [N, F_fut] float32 calendar features
    past_features: tuple[str, ...]
    target_names: tuple[str, ...]
    future_features: tuple[str, ...]
    mean: np.ndarray  # [F_in] raw-unit statistics of the train rows
    std: np.ndarray  # [F_in]
    split: Split
    frequency: Frequency  # what the timestamps follow: a pandas offset alias, and holidays

    @property
    def target_index(self) -> tuple[int, ...]:
        return tuple(self.past_features.index(t) for t in self.target_names)

    def starts(self, part: str, input_len: int, horizon: int) -> np.ndarray:
        return window_starts(*self.split.part(part), input_len, horizon)

    def batch(
        self, starts: np.ndarray, input_len: int, horizon: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> past [B, L, F_in], future [B, H, F_fut], target [B, H, F_out] (scaled)."""
        past = gather(self.past, starts, 0, input_len)  # [B, L, F_in]
        future = gather(self.future, starts, input_len, horizon)  # [B, H, F_fut]
        targets = self.past[:, self.target_index]  # [N, F_out]
        target = gather(targets, starts, input_len, horizon)  # [B, H, F_out]
        return past, future, target


def load_frame(config: TrainConfig) -> Frame:
    """The raw frame behind `config.data`: a benchmark name, `synthetic`, or a CSV path."""
    name = config.data.lower()
    if name in ETT_FILES:
        return read_csv(dataset_file(ETT_FILES[name]), "date", "none")
    if name == "synthetic":
        return synthetic.generate(config.synthetic_rows, config.seed)
    path = Path(config.data)
    if not path.is_file():
        raise CSVError(
            f"--data {config.data!r} is neither a known dataset "
            f"({', '.join([*ETT_FILES, 'synthetic'])}) nor a CSV file"
        )
    return read_csv(path, config.date_col, config.fill)


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


def load(config: TrainConfig) -> tuple[Frame, Frequency]:
    """The frame behind `config.data` and the frequency its timestamps follow (`--freq`, else
    inferred; with `--holidays`' dates for business days); CSVError naming the row that does
    not follow it."""
    frame = load_frame(config)
    ts = frame.timestamps
    holidays = load_holidays(config.holidays, ts[0], ts[-1]) if len(ts) else ()
    try:
        return frame, frequency_of(ts, config.freq, holidays)
    except FrequencyError as err:
        row = "" if err.index is None else f"row {err.index + 1}: "  # read_csv's numbering
        raise CSVError(f"{config.data}: {row}{err}") from err


def prepare(
    config: TrainConfig,
    input_len: int,
    horizon: int,
    loaded: tuple[Frame, Frequency] | None = None,
) -> Series:
    frame, frequency = loaded or load(config)
    check_rows(config.data, len(frame), input_len, horizon)
    past_features, target_names = choose_columns(frame, config)
    future_features = check_names(config.future_features)
    split = split_for(config.data, input_len, len(frame))
    raw = frame.values[:, frame.column_index(past_features)]  # [N, F_in]
    mean, std = std_statistics(raw[slice(*split.train)])
    return Series(
        source=config.data,
        timestamps=frame.timestamps,
        past=std_scale(raw, mean, std).astype(np.float32),
        future=calendar_features(frame.timestamps, future_features),
        past_features=past_features,
        target_names=target_names,
        future_features=future_features,
        mean=mean,
        std=std,
        split=split,
        frequency=frequency,
    )
