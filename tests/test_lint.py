"""Guards on the tree itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, missing


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(command: list[str]) -> None:
    """`ruff check` and `ruff format` agree with the tree (`ruff format .` mends the second)."""
    ruff = Path(sys.executable).parent / "ruff"
    out = subprocess.run([str(ruff), *command], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_file_is_valid() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        missing("docker-compose", "run `make tools` (tests/tools/setup.sh)")
    out = subprocess.run(
        [exe, "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_comments_and_docs_cite_only_files_in_the_repository() -> None:
    """A `docs/….md` named in code, scripts or docs exists, and nothing cites the notes that
    sit beside a checkout on the machine it was written on (the `docs` of `../shared`)."""
    import re

    cited = re.compile(r"\bdocs/(?:[\w.-]+/)*[\w.-]+\.md\b")
    wrong = []
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if path.suffix not in {".py", ".md", ".sh", ".cc", ".h", ".toml", ".yml"} or (
            parts[0] in {".venv", ".tools", "build", ".git"} or not path.is_file()
        ):
            continue
        text = path.read_text(errors="replace")
        outside = "../shared" + "/docs"  # spelled apart, so that this file does not cite it
        if outside in text:
            wrong.append(f"{path.relative_to(ROOT)}: cites {outside}")
        for name in set(cited.findall(text)):
            if not (ROOT / name).is_file():
                wrong.append(f"{path.relative_to(ROOT)}: cites {name}, which does not exist")
    assert not wrong, "\n".join(wrong)
