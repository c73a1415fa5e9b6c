"""`make test` replays the committed fuzz corpus (tests/fuzz/corpus/<target>/): every input
the fuzzers kept, through the same targets, in seconds. A campaign (`make fuzz`) adds to it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fuzz.run import CORPUS
from tests.fuzz.targets import TARGETS


@pytest.mark.parametrize("name", list(TARGETS))
def test_corpus_replays_cleanly(name: str) -> None:
    files = sorted((CORPUS / name).iterdir())
    assert len(files) >= 2, f"no corpus for {name}: python -m tests.fuzz.run --seed"
    for path in files:
        TARGETS[name](path.read_bytes())


@pytest.mark.slow  # builds the replayer with ASan and UBSan
def test_native_acceptance_corpus_replays_cleanly(tmp_path: Path) -> None:
    """The native target, built with g++ under ASan and UBSan (no libFuzzer needed)."""
    from tests.conftest import native_built

    native_built()
    binary = tmp_path / "accept_replay"
    build = subprocess.run(
        ["make", "--no-print-directory", f"FUZZ_REPLAY={binary}", "fuzz-replay-binary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    files = sorted(str(p) for p in (CORPUS / "native_accept").iterdir())
    assert len(files) >= 2
    out = subprocess.run(
        [str(binary), *files],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
            "ASAN_OPTIONS": "detect_leaks=0",
        },
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"replayed {len(files)} inputs" in out.stdout
