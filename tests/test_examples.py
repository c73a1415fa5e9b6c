"""The examples run against a server with the default models (tiny preset)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess, tool


def _run(python: str, script: str, target: str) -> str:
    out = subprocess.run(
        [python, str(ROOT / "examples" / script), "-u", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_translate_example(tiny_server: ServerProcess) -> None:
    out = _run(sys.executable, "translate.py", tiny_server.target)
    assert "dreihundertzweiundvierzig ->" in out and "streamed:" in out


def test_tritonclient_example(tiny_server: ServerProcess) -> None:
    out = _run(str(tool("tritonclient")), "tritonclient_infer.py", tiny_server.target)
    assert "server: seqserve" in out and "translation:" in out
    assert "forecast shape: (1, " in out


def test_forecast_example_needs_the_default_window(tiny_server: ServerProcess) -> None:
    # The tiny forecaster takes 48 steps of price, index, news: the example CSV (120 rows of
    # the default model's columns) serves it too.
    out = _run(sys.executable, "forecast.py", tiny_server.target)
    assert "forecaster_gru v1:" in out


def test_forecast_command_on_the_example_csv(tiny_server: ServerProcess) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "forecast",
            "--model",
            "forecaster_gru",
            "--csv",
            "examples/forecast_input.csv",
            "-u",
            tiny_server.target,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[:2] == ["timestamp", "price"]


@pytest.mark.slow  # trains and exports a model, then serves it
def test_the_stock_example_end_to_end(tmp_path: Path) -> None:
    """examples/stock/README.md with tiny settings: the synthetic business-day data, a GRU
    trained with the exchange's holidays and exported, served; the CLI forecasts the next five
    business days with quantiles and a plot, and the Python client example does too."""
    csv = tmp_path / "stock.csv"
    seqserve = [sys.executable, "-m", "seqserve"]
    steps = [
        [sys.executable, "examples/stock/make_data.py", "--out", str(csv), "--start", "2023-01-02"],
        [*seqserve, "train", "forecaster", "--data", str(csv), "--features", "MS",
         "--target", "price", "--future-features", "weekday", "--horizon", "5",
         "--quantiles", "0.1,0.5,0.9", "--holidays", "XKRX", "--cell", "gru",
         "--d-model", "16", "--epochs", "1", "--threads", "1", "--quiet",
         "--out", str(tmp_path / "run")],
        [*seqserve, "export", "--checkpoint", str(tmp_path / "run"),
         "--repository", str(tmp_path / "repo"), "--name", "stock_gru"],
    ]  # fmt: skip
    for cmd in steps:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    server = ServerProcess(tmp_path / "repo")
    try:
        server.wait_ready()
        plot = tmp_path / "stock.png"
        out = subprocess.run(
            [*seqserve, "forecast", "-u", server.target, "--model", "stock_gru",
             "--csv", str(csv), "--plot", str(plot)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split() == ["timestamp", "price", "price", "q0.1", "price", "q0.5",
                                    "price", "q0.9"]  # fmt: skip
        days = [line.split()[0][:10] for line in lines[1:]]
        # the exchange's calendar (--holidays XKRX) closes 31 December and 1 January, which
        # the data has not reached: the horizon skips them with the weekend
        assert days == ["2025-01-02", "2025-01-03", "2025-01-06", "2025-01-07", "2025-01-08"]
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        out = subprocess.run(
            [sys.executable, "examples/stock/forecast.py", "-u", server.target, "--csv", str(csv)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "stock_gru v1: price, the next 5 business days" in out.stdout
    finally:
        server.terminate()
