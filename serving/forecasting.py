"""The forecasting task on top of a served forecaster: named series and timestamps in,
tensors to the model, forecasts with timestamps out. Used by the typed Forecaster API; the V2
protocol sends the tensors directly.

The tensor contract (docs/model-repository.md): input `past` FP32 [B, L, F_in] in raw units in
the order of parameter `past_features`; optional input `future` FP32 [B, H, F_fut] in the order
of `future_features` (calendar features computed here from the timestamps, in UTC, plus any
known-future covariates the client sends); outputs `forecast` [B, H, F_out] in the order of
`target_names` and, when trained with quantiles, `quantiles` [B, H, F_out, Q].

History rule: a series longer than the model's window L is cut to its last L values; a shorter
one is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.calendar import DAY_NS, Frequency, FrequencyError, calendar_features
from core.calendar import FEATURES as CALENDAR
from core.errors import InvalidInput
from protos.inference import model_config_pb2 as mc
from serving.models.base import ServedModel, parameter

NS = np.timedelta64(1, "ns")
# What datetime64[ns] holds (1677-09-21 to 2262-04-11; the lowest int64 is NaT). Timestamps,
# durations and the horizon's timestamps are checked against it in Python integers, so no
# numpy arithmetic can wrap around.
MIN_NS, MAX_NS = -(2**63) + 1, 2**63 - 1


def nanoseconds(seconds: int, nanos: int, where: str) -> int:
    """A protobuf Timestamp or Duration as integer nanoseconds, within datetime64[ns]."""
    ns = seconds * 1_000_000_000 + nanos
    if not MIN_NS <= ns <= MAX_NS:
        raise InvalidInput(
            f"{where}: {seconds} s is outside the range served "
            "(1677-09-22 to 2262-04-11 UTC, or as many seconds for a duration)"
        )
    return ns


@dataclass(frozen=True)
class ForecasterSpec:
    """A forecaster's task metadata, read from its config's `parameters`."""

    name: str
    version: int
    input_window: int
    horizon: int
    past_features: tuple[str, ...]
    target_names: tuple[str, ...]
    future_features: tuple[str, ...]
    frequency: Frequency | None  # None: a repository that did not record one
    quantiles: tuple[float, ...]
    architecture: str
    metrics: dict[str, float]

    @property
    def frequency_ns(self) -> int | None:
        """The step in nanoseconds when the frequency is a fixed one."""
        return self.frequency.fixed_ns if self.frequency else None

    @property
    def calendar(self) -> tuple[str, ...]:
        return tuple(f for f in self.future_features if f in CALENDAR)

    @property
    def known_future(self) -> tuple[str, ...]:
        return tuple(f for f in self.future_features if f not in CALENDAR)

    @classmethod
    def of(cls, model: ServedModel) -> ForecasterSpec:
        cfg = model.config
        if parameter(cfg, "task") != "forecaster":
            raise InvalidInput(
                f"model '{model.name}' is not a forecaster (task {parameter(cfg, 'task')!r})"
            )
        metrics = parameter(cfg, "metrics", {}) or {}
        return cls(
            name=model.name,
            version=model.version,
            input_window=int(parameter(cfg, "input_window")),
            horizon=int(parameter(cfg, "horizon")),
            past_features=tuple(parameter(cfg, "past_features", [])),
            target_names=tuple(parameter(cfg, "target_names", [])),
            future_features=tuple(parameter(cfg, "future_features", []) or []),
            frequency=_frequency(cfg),
            quantiles=tuple(float(q) for q in parameter(cfg, "quantiles", []) or []),
            architecture=str(parameter(cfg, "architecture", "")),
            metrics={
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            },
        )


def _frequency(cfg: mc.ModelConfig) -> Frequency | None:
    """The config's `frequency` alias (and `holidays`), else its older `frequency_seconds`."""
    try:
        if alias := parameter(cfg, "frequency"):
            return Frequency.parse(str(alias), parameter(cfg, "holidays", []) or [])
        seconds = parameter(cfg, "frequency_seconds")
        return Frequency.from_seconds(float(seconds)) if seconds not in (None, "", 0, "0") else None
    except (FrequencyError, ValueError) as err:
        raise InvalidInput(f"the model's frequency parameters are not usable: {err}") from err


@dataclass
class Window:
    """One item to forecast, in domain terms (field paths are for error messages)."""

    past: dict[str, np.ndarray]
    timestamps: np.ndarray | None = None  # datetime64[ns], one per past value
    start: np.datetime64 | None = None
    frequency_ns: int | None = None
    frequency_alias: str = ""
    future: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Prepared:
    inputs: dict[str, np.ndarray]
    horizon_timestamps: list[np.ndarray | None]  # per window: [H] datetime64[ns] or None


def _window_frequency(spec: ForecasterSpec, w: Window, where: str) -> Frequency | None:
    """The frequency a window's timestamps follow: the model's; a window's own alias must
    be the same."""
    if not w.frequency_alias:
        return spec.frequency
    try:
        given = Frequency.parse(w.frequency_alias)
    except FrequencyError as err:
        raise InvalidInput(f"{where}.frequency_alias: {err}") from err
    if spec.frequency and given.alias != spec.frequency.alias:
        raise InvalidInput(
            f"{where}.frequency_alias: {given.alias}, the model was trained on "
            f"{spec.frequency.alias}"
        )
    return spec.frequency or given


def _past_times(
    spec: ForecasterSpec, w: Window, n: int, where: str
) -> tuple[np.ndarray | None, Frequency | None]:
    """Timestamps of the past values, checked (sorted; on the model's frequency, or evenly
    spaced when it has none), and the frequency the forecast's timestamps follow."""
    freq = _window_frequency(spec, w, where)
    fixed = freq.fixed_ns if freq else None
    if w.timestamps is not None and len(w.timestamps):
        ts = w.timestamps
        if len(ts) != n:
            raise InvalidInput(f"{where}.timestamps: {len(ts)} timestamps for {n} values")
        ints = ts.astype(np.int64)
        if (ints[1:] <= ints[:-1]).any():
            i = int(np.argmax(ints[1:] <= ints[:-1])) + 1
            raise InvalidInput(f"{where}.timestamps: not strictly increasing at index {i}")
        if int(ints[-1]) - int(ints[0]) > MAX_NS:
            raise InvalidInput(f"{where}.timestamps: span more than 292 years")
        if freq is not None and fixed is None:  # business days, months, quarters, years
            try:  # a business-day window may skip holidays the model never saw, as in training
                return ts, freq.checked(ts)
            except FrequencyError as err:
                raise InvalidInput(f"{where}.timestamps: index {err.index}: {err}") from err
        steps = np.diff(ints)  # increasing, within one int64 span: no wrap-around
        if len(steps) and (steps != steps[0]).any():
            i = int(np.argmax(steps != steps[0])) + 1
            raise InvalidInput(
                f"{where}.timestamps: irregular spacing at index {i} "
                f"({steps[i - 1] / 1e9:g} s, expected {steps[0] / 1e9:g} s)"
            )
        step = int(steps[0]) if len(steps) else fixed
    elif w.start is not None:
        if freq is not None and fixed is None:
            if freq.off_calendar(np.array([w.start])).any():
                raise InvalidInput(f"{where}.start: {w.start} is not on frequency {freq.alias}")
            if int(w.start.astype(np.int64)) > MAX_NS - n * 366 * DAY_NS:
                raise InvalidInput(f"{where}: the window runs past 2262-04-11, the end served")
            return freq.advance(np.full(n, w.start), np.arange(n)), freq
        step = w.frequency_ns or fixed
        if not step or step <= 0:
            raise InvalidInput(f"{where}.frequency: needed with start (a positive duration)")
        start = int(w.start.astype(np.int64))
        if max(start, 0) + (n - 1) * step > MAX_NS:
            raise InvalidInput(
                f"{where}: start + {n - 1} steps of {step / 1e9:g} s is past "
                "2262-04-11, the end of the range served"
            )
        ts = w.start + np.arange(n, dtype=np.int64) * np.timedelta64(step, "ns")
    else:
        if spec.calendar:
            raise InvalidInput(
                f"{where}: timestamps (or start and frequency) are needed: the "
                f"model computes calendar features {', '.join(spec.calendar)}"
            )
        return None, freq
    if fixed and step and step != fixed:
        raise InvalidInput(
            f"{where}: series spaced {step / 1e9:g} s apart, the model was "
            f"trained on {fixed / 1e9:g} s ({freq.alias if freq else ''})"
        )
    if freq is not None and freq.alias.startswith("W-") and (off := freq.off_calendar(ts)).any():
        i = int(np.argmax(off))  # a week's anchor day
        raise InvalidInput(f"{where}.timestamps: index {i} is not on frequency {freq.alias}")
    return ts, (freq or (Frequency.from_seconds(step / 1e9) if step else None))


def prepare(spec: ForecasterSpec, windows: list[Window]) -> Prepared:
    """Check the windows and build the model's input tensors."""
    if not windows:
        raise InvalidInput("windows: at least one window is needed")
    L, H = spec.input_window, spec.horizon  # noqa: N806 - the repo's shape letters
    past = np.empty((len(windows), L, len(spec.past_features)), np.float32)  # [B, L, F_in]
    future = np.empty((len(windows), H, len(spec.future_features)), np.float32)  # [B, H, F_fut]
    horizons: list[np.ndarray | None] = []
    calendar = [f for f, name in enumerate(spec.future_features) if name in CALENDAR]
    for b, w in enumerate(windows):
        where = f"windows[{b}]"
        unknown = sorted(set(w.past) - set(spec.past_features))
        if unknown:
            raise InvalidInput(
                f"{where}.past: unknown series '{unknown[0]}'; model "
                f"'{spec.name}' takes: {', '.join(spec.past_features)}"
            )
        lengths = set()
        for f, name in enumerate(spec.past_features):
            if name not in w.past:
                raise InvalidInput(f"{where}.past: series '{name}' is missing")
            values = np.asarray(w.past[name], np.float32)
            if len(values) < L:
                raise InvalidInput(
                    f"{where}.past['{name}']: {len(values)} values, the model needs the last {L}"
                )
            if not np.isfinite(values).all():
                i = int(np.argmax(~np.isfinite(values)))
                raise InvalidInput(f"{where}.past['{name}']: value {i} is not finite")
            lengths.add(len(values))
            past[b, :, f] = values[-L:]
        if len(lengths) > 1:
            raise InvalidInput(f"{where}.past: series have different lengths {sorted(lengths)}")
        n = lengths.pop()
        ts, freq = _past_times(spec, w, n, where)
        horizon = None
        if ts is not None and freq is not None:
            # a calendar step is at most a year: 366 days bounds every frequency served
            step = freq.fixed_ns or 366 * DAY_NS
            if max(int(ts[-1].astype(np.int64)), 0) + H * step > MAX_NS:
                raise InvalidInput(
                    f"{where}: the forecast's {H} steps of {freq.alias} "
                    "run past 2262-04-11, the end of the range served"
                )
            horizon = freq.following(ts[-1], H)
        horizons.append(horizon)
        extra = sorted(set(w.future) - set(spec.known_future))
        if extra:
            raise InvalidInput(
                f"{where}.future: unknown series '{extra[0]}'; model "
                f"'{spec.name}' takes: {', '.join(spec.known_future) or 'none'}"
            )
        if spec.calendar:
            assert horizon is not None  # _past_times demanded timestamps
            future[b][:, calendar] = calendar_features(horizon, spec.calendar)  # [H, F_cal]
        for f, name in enumerate(spec.future_features):
            if name in CALENDAR:
                continue
            if name not in w.future:
                raise InvalidInput(f"{where}.future: known-future series '{name}' is missing")
            values = np.asarray(w.future[name], np.float32)
            if len(values) != H or not np.isfinite(values).all():
                raise InvalidInput(
                    f"{where}.future['{name}']: needs {H} finite values, got {len(values)}"
                )
            future[b, :, f] = values
    inputs = {"past": past}
    if spec.future_features:
        inputs["future"] = future
    return Prepared(inputs, horizons)


def quantile_indices(spec: ForecasterSpec, levels: list[float]) -> list[int]:
    """Positions of the requested levels in the model's quantile axis (all when empty)."""
    if not levels:
        return list(range(len(spec.quantiles)))
    out = []
    for q in levels:
        match = [i for i, known in enumerate(spec.quantiles) if abs(known - q) < 1e-6]
        if not match:
            trained = ", ".join(f"{k:g}" for k in spec.quantiles) or "none"
            raise InvalidInput(
                f"quantile_levels: {q:g} is not one the model was trained for ({trained})"
            )
        out.append(match[0])
    return out
