"""A user's daily business-day CSV (the lecture's stock example: price, index, news), with an
exchange holiday, trains, exports and records its frequency: the weekdays it skipped are
holidays, and the repository says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from export.forecaster import export_forecaster
from protos.inference import model_config_pb2 as mc
from training.config import ForecasterConfig, TrainConfig
from training.train_forecaster import train


def stock_csv(path: Path, holidays: tuple[str, ...]) -> Path:
    every = np.arange(np.datetime64("2023-01-02"), np.datetime64("2024-03-29") + 1)
    days = every[np.is_busday(every, holidays=list(holidays))]  # [N] business days
    rng = np.random.default_rng(0)
    index = 2500 + np.cumsum(rng.standard_normal(len(days)))
    price = 0.02 * index + np.cumsum(rng.standard_normal(len(days))) * 0.1
    news = rng.poisson(3, len(days))
    rows = [
        f"{d}T00:00:00+09:00,{p:.3f},{i:.2f},{n}"
        for d, p, i, n in zip(days, price, index, news, strict=True)
    ]
    path.write_text("date,price,kospi,news\n" + "\n".join(rows) + "\n")
    return path


def test_a_business_day_series_trains_exports_and_records_its_holidays(tmp_path: Path) -> None:
    holidays = ("2023-03-01", "2023-05-05", "2024-01-01")
    csv = stock_csv(tmp_path / "stock.csv", holidays)
    model = ForecasterConfig(input_len=20, horizon=5, seg_len=5, d_model=16, quantiles=(0.1, 0.9))
    config = TrainConfig(data=str(csv), features="MS", target=("price",), epochs=1, batch_size=32,
                         future_features=("weekday",), threads=1)  # fmt: skip
    train(model, config, tmp_path / "run", progress=False)
    version = export_forecaster(tmp_path / "run", tmp_path / "repo", "stock")
    cfg = mc.ModelConfig()
    text_format.Parse((version.parent / "config.pbtxt").read_text(), cfg)
    assert cfg.parameters["frequency"].string_value == "B"
    assert json.loads(cfg.parameters["holidays"].string_value) == list(holidays)
    assert cfg.parameters["frequency_seconds"].string_value == "0"
