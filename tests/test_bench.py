"""The serving benchmark runs end to end on a small model (numbers are not asserted: timings
belong to benchmarks, not tests)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, tool
from tests.serving.model_factory import AFFINE_CONFIG, add_model, affine


def test_bench_serving_writes_results(tmp_path: Path) -> None:
    tool("perf_analyzer", "perf_analyzer")
    tool("tritonclient", "python")
    repo = tmp_path / "model_repository"
    add_model(repo, "affine", AFFINE_CONFIG.format(
        scheduling="dynamic_batching { max_queue_delay_microseconds: 0 }", extra=""), affine)
    results = tmp_path / "results"
    out = subprocess.run(
        [sys.executable, "-m", "seqserve", "bench", "serving", "--repository", str(repo),
         "--model", "affine", "--concurrency", "1,8", "--window-ms", "500", "--repeats", "1",
         "--seconds", "0.1", "--startup-repeats", "1", "--results-dir", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (result,) = results.glob("serving-affine-*.json")
    data = json.loads(result.read_text())
    assert set(data["in_process"]) == {"1", "8", "32"}
    assert data["startup"]["models"] == ["affine"] and data["startup"]["ready_s"] > 0
    assert data["startup"]["rss_mib"] > 10
    for gen in ("perf_analyzer", "tritonclient"):
        runs = data["served"][gen]
        assert set(runs) == {"batching_on", "batching_off"}
        for label in runs:
            for c in ("1", "8"):
                assert runs[label][c]["inferences_per_s"] > 0
                assert runs[label][c]["p50_ms"] <= runs[label][c]["p99_ms"]
        assert runs["batching_off"]["8"]["avg_batch"] == 1.0  # nothing batched when off
    assert data["served"]["tritonclient"]["batching_on"]["8"]["errors"] == 0
    assert data["summary"]["batching_gain_c8"] > 0
    if importlib.util.find_spec("matplotlib"):
        assert result.with_suffix(".png").stat().st_size > 1000
