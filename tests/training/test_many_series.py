"""Many series in one long-format file (StatsForecast's unique_id, ds, y): one global model,
each series split by time on its own, metrics per series and averaged, and a graph that scales
each window by itself, so that serving needs no series id; `seqserve forecast` forecasts every
series of such a file, or the one named by --id."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.forecaster import parameters_of
from export.repository import read_config
from tests.conftest import ROOT, ServerProcess
from training import checkpoint
from training.config import ForecasterConfig, TrainConfig
from training.data.series import load, prepare

# series id -> (rows, scale): sizes four orders of magnitude apart, and one too short to train
PANEL = {"small": (300, 0.01), "unit": (340, 1.0), "big": (380, 100.0), "huge": (420, 1e4),
         "stub": (15, 5.0)}  # fmt: skip


def panel_csv(path: Path) -> Path:
    """Daily series with a weekly cycle and a slow wave, each at its own scale; rows grouped
    by series, as StatsForecast writes them."""
    rng = np.random.default_rng(0)
    lines = ["unique_id,ds,y"]
    for key, (rows, scale) in PANEL.items():
        days = np.arange(np.datetime64("2022-01-03"), np.datetime64("2022-01-03") + rows)
        t = np.arange(rows)
        level = 10 + 3 * np.sin(2 * np.pi * t / 7) + np.sin(2 * np.pi * t / 60)
        values = scale * (level + 0.3 * rng.standard_normal(rows))
        lines += [f"{key},{d},{v:.6g}" for d, v in zip(days, values, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def panel_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    from export.forecaster import export_forecaster
    from training.train_forecaster import train

    tmp = tmp_path_factory.mktemp("panel")
    csv = panel_csv(tmp / "panel.csv")
    model = ForecasterConfig(d_model=16, quantiles=(0.1, 0.5, 0.9))
    config = TrainConfig(data=str(csv), features="S", target=("y",), epochs=3, batch_size=32,
                         future_features=("weekday",), threads=1, plot_windows=1)  # fmt: skip
    metrics = train(model, config, tmp / "run", progress=False)
    export_forecaster(tmp / "run", tmp / "repo", "panel")
    return csv, tmp, metrics


def test_each_series_is_split_by_time_on_its_own(tmp_path: Path) -> None:
    csv = panel_csv(tmp_path / "panel.csv")
    config = TrainConfig(data=str(csv), features="S", target=("y",))
    frames, frequency = load(config)
    assert list(frames) == list(PANEL) and frequency.alias == "D"
    said: list[str] = []  # what the caller's `note` hears (training: rank 0 only)
    series = prepare(config, 28, 14, (frames, frequency), note=said.append)
    assert series.ids == ("small", "unit", "big", "huge")  # the stub is too short to train on
    assert said == ["1 of 5 series are too short for one training window of L 28 + H 14: left out"]
    offset = 0
    for key, split in zip(series.ids, series.splits, strict=True):
        rows = PANEL[key][0]
        assert split.train == (offset, offset + int(rows * 0.7))
        assert split.test[1] == offset + rows  # each series' test part is its own last rows
        offset += rows
    starts = series.starts("test", 28, 14)
    # no window crosses from one series into the next
    ends = starts + 28 + 14
    blocks = np.cumsum([PANEL[k][0] for k in series.ids])
    assert np.all(np.searchsorted(blocks, starts, side="right")
                  == np.searchsorted(blocks, ends - 1, side="right"))  # fmt: skip


def test_metrics_are_per_series_and_averaged(panel_run: tuple[Path, Path, dict]) -> None:
    _, tmp, metrics = panel_run
    payload = checkpoint.load(tmp / "run")
    assert payload["model_args"]["scaling"] == "window"  # chosen for a long-format file
    assert payload["data"]["series"] == ["small", "unit", "big", "huge"]
    parameters = parameters_of(read_config(tmp / "repo" / "panel"))
    assert parameters["scaling"] == "window" and parameters["series"] == payload["data"]["series"]
    per = metrics["test_per_series"]
    assert set(per) == {"small", "unit", "big", "huge"}
    assert metrics["test_mse"] == pytest.approx(np.mean([p["mse"] for p in per.values()]))
    # every series, whatever its size, is forecast in its own units about equally well
    assert max(p["mse"] for p in per.values()) < 5 * min(p["mse"] for p in per.values())
    assert metrics["test_mse"] < metrics["repeat_last_test_mse"]
    for tau in (0.1, 0.5, 0.9):
        assert metrics[f"test_coverage_{tau:g}"] == pytest.approx(tau, abs=0.15)


def test_the_graph_scales_each_window_by_itself(panel_run: tuple[Path, Path, dict]) -> None:
    """A window times a and plus b forecasts a times and plus b: one model for every size,
    served without a series id (V2 carries none)."""
    _, tmp, _ = panel_run
    session = ort.InferenceSession(str(tmp / "repo" / "panel" / "1" / "model.onnx"))
    inputs = {i.name: i.shape for i in session.get_inputs()}
    rng = np.random.default_rng(1)
    L = inputs["past"][1]  # noqa: N806
    past = 10 + 3 * np.sin(2 * np.pi * np.arange(L) / 7) + 0.3 * rng.standard_normal(L)
    feeds = {"past": past.reshape(1, L, 1).astype(np.float32)}
    feeds["future"] = rng.uniform(-0.5, 0.5, [1, *inputs["future"][1:]]).astype(np.float32)
    forecast, quantiles = session.run(["forecast", "quantiles"], feeds)
    for a, b in ((1000.0, 5000.0), (0.001, -2.0)):
        scaled = {**feeds, "past": (a * feeds["past"] + b).astype(np.float32)}
        f2, q2 = session.run(["forecast", "quantiles"], scaled)
        np.testing.assert_allclose(f2, a * forecast + b, rtol=2e-3, atol=2e-3 * a)
        np.testing.assert_allclose(q2, a * quantiles + b, rtol=2e-3, atol=2e-3 * a)


def test_fp16_keeps_the_window_scaling_in_fp32(
    panel_run: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """The GPU export: the network in fp16, the raw-unit window scaling around it in fp32, so
    a series in the millions (fp16 ends at 65504) forecasts as the fp32 graph does."""
    from export.forecaster import ExportOptions, export_forecaster

    _, tmp, _ = panel_run
    out = export_forecaster(tmp / "run", tmp_path, "half", ExportOptions(quantize="fp16"))
    full = ort.InferenceSession(str(tmp / "repo" / "panel" / "1" / "model.onnx"))
    half = ort.InferenceSession(str(out / "model.onnx"))
    L = full.get_inputs()[0].shape[1]  # noqa: N806
    feeds = {"past": (1e6 * (10 + np.sin(np.arange(L) / 3))).reshape(1, L, 1).astype(np.float32)}
    feeds["future"] = np.zeros([1, *full.get_inputs()[1].shape[1:]], np.float32)
    want, got = full.run(["forecast"], feeds)[0], half.run(["forecast"], feeds)[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-3)


@pytest.mark.slow  # serves the model
def test_forecast_command_forecasts_every_series(panel_run: tuple[Path, Path, dict]) -> None:
    csv, tmp, _ = panel_run
    server = ServerProcess(tmp / "repo")
    try:
        server.wait_ready()
        command = [sys.executable, "-m", "seqserve", "forecast", "-u", server.target,
                   "--model", "panel", "--csv", str(csv), "--json"]  # fmt: skip
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        records = json.loads(out.stdout)
        assert [r["unique_id"] for r in records] == ["small", "unit", "big", "huge"]
        assert "1 series have fewer than" in out.stderr and "'stub'" in out.stderr
        last = {k: PANEL[k][1] * 10 for k in ("small", "huge")}  # each near its own level
        for r in records:
            if r["unique_id"] in last:
                level = np.mean(r["forecast"]["y"])
                assert last[r["unique_id"]] / 2 < level < last[r["unique_id"]] * 2
        one = subprocess.run([*command[:-1], "--id", "big"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert one.returncode == 0, one.stderr
        rows = one.stdout.splitlines()
        assert rows[0].split()[:2] == ["unique_id", "timestamp"]
        assert all(line.startswith("big ") for line in rows[1:]) and len(rows) > 1
    finally:
        server.terminate()


def test_a_window_scaled_model_of_one_series_reports_standardised_metrics(
    tmp_path: Path,
) -> None:
    """A window-scaled model reads raw units, but its metrics are in the series' standard
    units as any other's: the repeat-last baseline, which no model changes, scores the same."""
    from training.train_forecaster import train

    model = ForecasterConfig(input_len=48, horizon=24, seg_len=24, d_model=16)
    config = TrainConfig(data="synthetic", features="S", synthetic_rows=1500, epochs=1,
                         batch_size=64, threads=1, plot_windows=1)  # fmt: skip
    runs = {
        scaling: train(replace(model, scaling=scaling), config, tmp_path / scaling, progress=False)
        for scaling in ("global", "window")
    }
    assert runs["window"]["repeat_last_test_mse"] == pytest.approx(
        runs["global"]["repeat_last_test_mse"], rel=1e-6
    )
    assert runs["window"]["test_mse"] < runs["window"]["repeat_last_test_mse"]
