"""The main job end to end: build the default repository (tiny preset, the same code path as
`make serve`), serve it, and get an answer from every model in it."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, ServerProcess
from training.defaults import BUILDERS


def test_build_serve_answer(tmp_path: Path) -> None:
    repo = tmp_path / "model_repository"
    out = subprocess.run([sys.executable, "-m", "seqserve", "build-repository", "--repository",
                          str(repo), "--preset", "tiny"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    assert models == sorted(BUILDERS)

    server = ServerProcess(repo)
    try:
        server.wait_ready()
        health = subprocess.run([sys.executable, "-m", "seqserve", "health", "--target",
                                 server.target], capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stdout
        with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
            assert resp.status == 200
    finally:
        assert server.terminate() == 0
