"""Default-repository builders for `forecaster_gru` and `forecaster_lstm`.

Preset "default": the ETTh1 accuracy configuration (SegRNN-style, segments of 24, one layer,
L = H = 96, same optimiser and epochs) at half its width, d_model 256 instead of 512, trained
on the built-in synthetic series (two years hourly: price target, index and news covariates),
with the calendar inputs and 0.1/0.5/0.9 quantile heads a served demo wants. On that series
width 512 lowers validation MSE by only 1.6 % (GRU) but costs 3.6x to 4.2x per batch-1 call
(a recurrent step reads 6.3 MB of weights instead of 1.6 MB) and 2.6x the training time;
docs/forecasting.md has the measurements. About 45 s each on 2 cores.
Preset "tiny": a small network for tests, built in seconds.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from training.config import ForecasterConfig, TrainConfig

FUTURE_FEATURES = ("hour", "weekday", "month")
QUANTILES = (0.1, 0.5, 0.9)
DEFAULT_WIDTH = 256  # the served default; ETTh1 benchmarks keep 512 (SegRNN's)


@dataclass(frozen=True)
class ForecasterPreset:
    """A named recipe: the network and its training, as the two config dataclasses."""

    model: ForecasterConfig
    train: TrainConfig


FORECASTER_PRESETS: dict[str, ForecasterPreset] = {
    "default": ForecasterPreset(
        ForecasterConfig(d_model=DEFAULT_WIDTH, quantiles=QUANTILES),
        TrainConfig(
            data="synthetic",
            features="MS",
            future_features=FUTURE_FEATURES,
            synthetic_rows=2 * 8760,
            threads=2,
        ),
    ),
    "tiny": ForecasterPreset(
        ForecasterConfig(input_len=48, horizon=24, d_model=16, seg_len=24, quantiles=QUANTILES),
        TrainConfig(
            data="synthetic",
            features="MS",
            future_features=FUTURE_FEATURES,
            synthetic_rows=1500,
            epochs=1,
            batch_size=64,
            threads=1,
        ),
    ),
}


def build_forecaster_model(repository: Path, preset: str, cell: str, name: str) -> Path:
    """Train on the synthetic series and export into `repository/name`."""
    from export.forecaster import export_forecaster
    from training.train_forecaster import train

    recipe = FORECASTER_PRESETS[preset]
    with tempfile.TemporaryDirectory(prefix=f"seqserve-{name}-") as tmp:
        train(replace(recipe.model, cell=cell), recipe.train, Path(tmp), progress=False)
        return export_forecaster(Path(tmp), repository, name)


def forecaster_gru(repository: Path, preset: str) -> None:
    build_forecaster_model(repository, preset, "gru", "forecaster_gru")


def forecaster_lstm(repository: Path, preset: str) -> None:
    build_forecaster_model(repository, preset, "lstm", "forecaster_lstm")
