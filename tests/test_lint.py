"""Guards on the tree itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(command: list[str]) -> None:
    """`ruff check` and `ruff format` agree with the tree (`ruff format .` mends the second)."""
    ruff = Path(sys.executable).parent / "ruff"
    out = subprocess.run([str(ruff), *command], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_file_is_valid() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed: run `make tools`")
    out = subprocess.run(
        [exe, "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
