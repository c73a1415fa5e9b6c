"""prepare(): column choice per setting, scaler fitted on train rows only, batch shapes; run on a
generated 17,420-row file in the ETTh1 layout (the real files are for benchmarks)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from core.calendar import Frequency
from training.config import TrainConfig
from training.data import sources
from training.data.series import prepare

COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
ROWS = 17_420


@pytest.fixture(scope="module")
def ett_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake ETTh1.csv: hourly rows, each column a different ramp, so scaling is checkable."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "ett").mkdir()
    stamps = np.datetime64("2016-07-01T00:00") + np.arange(ROWS).astype("timedelta64[h]")
    values = np.arange(ROWS)[:, None] * (1 + np.arange(7)) + np.sin(np.arange(ROWS))[:, None]
    lines = ["date," + ",".join(COLUMNS)]
    lines += [
        str(s).replace("T", " ") + ":00," + ",".join(f"{v:.3f}" for v in row)
        for s, row in zip(stamps, values, strict=True)
    ]
    (folder / "ett" / "ETTh1.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def etth1(ett_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_DATA_DIR", str(ett_dir))
    digest = hashlib.sha256((ett_dir / "ett" / "ETTh1.csv").read_bytes()).hexdigest()
    monkeypatch.setitem(sources.SHA256, "ett/ETTh1.csv", digest)


@pytest.mark.usefixtures("etth1")
def test_standard_split_counts_and_train_only_scaler() -> None:
    series = prepare(TrainConfig(data="etth1", features="M"), 96, 96)
    assert series.past_features == tuple(COLUMNS) and series.target_names == tuple(COLUMNS)
    assert [len(series.starts(p, 96, 96)) for p in ("train", "val", "test")] == [8449, 2785, 2785]
    raw = series.past * series.std + series.mean  # back to raw units
    train = raw[:8640]
    np.testing.assert_allclose(series.mean, train.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(series.std, train.std(axis=0), rtol=1e-5)  # population std
    np.testing.assert_allclose(series.past[:8640].mean(axis=0), 0, atol=1e-4)
    assert series.past[8640:].mean() > 1  # later rows are not re-centred: train-only statistics
    assert series.frequency == Frequency("h")


@pytest.mark.usefixtures("etth1")
@pytest.mark.parametrize(
    ("features", "n_in", "targets"), [("M", 7, COLUMNS), ("S", 1, ["OT"]), ("MS", 7, ["OT"])]
)
def test_settings_and_batch_shapes(features: str, n_in: int, targets: list[str]) -> None:
    config = TrainConfig(data="etth1", features=features, future_features=("hour", "weekday"))
    series = prepare(config, 96, 48)
    assert list(series.target_names) == targets and len(series.past_features) == n_in
    past, future, target = series.batch(series.starts("test", 96, 48)[:5], 96, 48)
    assert past.shape == (5, 96, n_in)
    assert future.shape == (5, 48, 2)
    assert target.shape == (5, 48, len(targets))
    ot = series.past_features.index("OT")
    np.testing.assert_array_equal(
        target[..., -1],
        series.past[series.starts("test", 96, 48)[:5, None] + 96 + np.arange(48), ot],
    )


def test_unknown_data_and_columns_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a known dataset"):
        prepare(TrainConfig(data=str(tmp_path / "nope.csv")), 96, 96)
    path = tmp_path / "s.csv"
    path.write_text("date,a\n" + "".join(f"2021-01-01T{h:02d}:00,{h}\n" for h in range(24)))
    with pytest.raises(ValueError, match="no column 'b'"):
        prepare(TrainConfig(data=str(path), target=("b",)), 4, 2)
