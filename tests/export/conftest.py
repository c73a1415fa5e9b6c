"""Tiny trained forecasters and their exports, built once per session (exports cost seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from training.config import ForecasterConfig, TrainConfig

# Every exportable forecaster kind: both architectures, both cells, with and without the optional
# `future` input and `quantiles` output.
VARIANTS: dict[str, tuple[ForecasterConfig, TrainConfig]] = {
    "segrnn-gru": (
        ForecasterConfig(
            arch="segrnn",
            cell="gru",
            input_len=48,
            horizon=24,
            d_model=16,
            seg_len=12,
            quantiles=(0.1, 0.5, 0.9),
        ),
        TrainConfig(
            data="synthetic",
            features="MS",
            future_features=("hour", "weekday"),
            synthetic_rows=1200,
            epochs=1,
            batch_size=64,
            threads=1,
            plot_windows=1,
        ),
    ),
    "segrnn-lstm": (
        ForecasterConfig(
            arch="segrnn", cell="lstm", input_len=48, horizon=24, d_model=16, seg_len=24
        ),
        TrainConfig(
            data="synthetic",
            features="M",
            synthetic_rows=1200,
            epochs=1,
            batch_size=64,
            threads=1,
            plot_windows=1,
        ),
    ),
    "rnn-gru": (
        ForecasterConfig(
            arch="rnn",
            cell="gru",
            input_len=48,
            horizon=24,
            d_model=16,
            layers=2,
            quantiles=(0.25, 0.75),
        ),
        TrainConfig(
            data="synthetic",
            features="M",
            future_features=("hour",),
            synthetic_rows=1200,
            epochs=1,
            batch_size=64,
            threads=1,
            plot_windows=1,
        ),
    ),
    "rnn-lstm": (
        ForecasterConfig(arch="rnn", cell="lstm", input_len=48, horizon=24, d_model=16),
        TrainConfig(
            data="synthetic",
            features="S",
            synthetic_rows=1200,
            epochs=1,
            batch_size=64,
            threads=1,
            plot_windows=1,
        ),
    ),
}


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    repository: Path
    name: str

    @property
    def model_dir(self) -> Path:
        return self.repository / self.name


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    """Each variant trained (1 epoch) and exported as version 1 of model <variant>."""
    from export.forecaster import export_forecaster
    from training.train_forecaster import train

    repository = tmp_path_factory.mktemp("model_repository")
    out = {}
    for name, (model_config, train_config) in VARIANTS.items():
        ckpt = tmp_path_factory.mktemp(f"ckpt-{name}")
        train(model_config, train_config, ckpt, progress=False)
        export_forecaster(ckpt, repository, name)
        out[name] = Exported(ckpt, repository, name)
    return out
