"""The examples run against a server with the default models (tiny preset)."""

from __future__ import annotations

import subprocess
import sys

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
