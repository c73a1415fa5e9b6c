"""A tiny forecaster trained once per session on the built-in synthetic series."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.config import ForecasterConfig, TrainConfig

TINY_MODEL = ForecasterConfig(
    input_len=48, horizon=24, d_model=32, seg_len=24, quantiles=(0.1, 0.5, 0.9)
)
TINY_TRAIN = TrainConfig(
    data="synthetic",
    features="MS",
    future_features=("hour", "weekday"),
    synthetic_rows=2000,
    epochs=4,
    batch_size=32,
    patience=2,
    threads=1,
    plot_windows=2,
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from training.train_forecaster import train

    out = tmp_path_factory.mktemp("tiny_forecaster")
    return out, train(TINY_MODEL, TINY_TRAIN, out, progress=False)
