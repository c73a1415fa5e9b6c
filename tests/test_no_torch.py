"""Serving never imports torch: not at import, not while serving, not in a torch-free venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, ServerProcess, free_port, tool

PROBE = """
import asyncio, sys
from pathlib import Path
import seqserve.cli
import serving.server, serving.dataplane, serving.probe, serving.servicers.inference
from serving.settings import Settings

async def main():
    server = serving.server.Server(Settings(model_repository=Path(sys.argv[1]), grpc_port=0,
                                            metrics_port=0, http_port=int(sys.argv[2])))
    await server.start()
    await server.stop()

asyncio.run(main())
seqserve.cli.build_parser()
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "onnxscript")))
print("LEAKED" if leaked else "CLEAN", leaked)
"""


def test_serving_code_paths_do_not_import_torch(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "CLEAN" in out.stdout, out.stdout


def test_serve_runs_in_a_venv_without_torch(tiny_repository: Path) -> None:
    """The default repository, translator engine process included, in a venv without torch."""
    import numpy as np

    from tests.serving.v2 import outputs, request, stub

    python = tool("serving-only")
    has_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert has_torch.returncode != 0, "the serving-only venv must not have torch"
    server = ServerProcess(tiny_repository, python=str(python))
    try:
        server.wait_ready()
        health = subprocess.run(
            [str(python), "-m", "seqserve", "health", "-u", server.target],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert health.returncode == 0 and health.stdout.strip() == "SERVING"
        channel, s = stub(server.target)
        with channel:
            text = np.array([[b"zweiundvierzig"]], dtype=object)
            got = outputs(s.ModelInfer(request("translator", text=text), timeout=30))
        assert got["translation"].reshape(-1)[0], "the engine process translated"
    finally:
        assert server.terminate() == 0


def test_training_commands_explain_the_missing_extra(tmp_path: Path) -> None:
    python = tool("serving-only")
    out = subprocess.run(
        [str(python), "-m", "seqserve", "build-repository", "--repository", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Building the default models needs torch: a clear message, not a traceback.
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "pip install 'seqserve[train]'" in out.stderr


def test_forecast_plot_says_what_a_serving_only_install_lacks(tmp_path: Path) -> None:
    """`seqserve forecast --plot` needs matplotlib, which serving-only installs leave out: it
    says so before calling any server."""
    python = tool("serving-only")
    lacks = subprocess.run([str(python), "-c", "import matplotlib"], capture_output=True)
    assert lacks.returncode != 0, "the serving-only venv must not have matplotlib"
    out = subprocess.run(
        [str(python), "-m", "seqserve", "forecast", "--csv", str(tmp_path / "x.csv"),
         "--plot", str(tmp_path / "x.png"), "-u", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "--plot needs matplotlib" in out.stderr, out.stderr
