"""The serving benchmark runs end to end on a small model (numbers are not asserted: timings
belong to benchmarks, not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, tool
from tests.serving.model_factory import AFFINE_CONFIG, add_model, affine


def test_bench_serving_writes_results(tmp_path: Path) -> None:
    tool("perf_analyzer", "perf_analyzer")
    repo = tmp_path / "model_repository"
    add_model(repo, "affine", AFFINE_CONFIG.format(
        scheduling="dynamic_batching { max_queue_delay_microseconds: 0 }", extra=""), affine)
    before = set((ROOT / "bench" / "results").glob("serving-affine-*.json"))
    out = subprocess.run(
        [sys.executable, "-m", "seqserve", "bench", "serving", "--repository", str(repo),
         "--model", "affine", "--concurrency", "1,8", "--window-ms", "500", "--repeats", "1",
         "--seconds", "0.1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (result,) = set((ROOT / "bench" / "results").glob("serving-affine-*.json")) - before
    try:
        data = json.loads(result.read_text())
        assert set(data["in_process"]) == {"1", "8", "32"}
        assert set(data["served"]) == {"batching_on", "batching_off"}
        assert data["served"]["batching_on"]["8"]["inferences_per_s"] > 0
        assert data["summary"]["batching_gain_c8"] > 0
    finally:
        result.unlink()
