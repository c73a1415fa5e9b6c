"""The serving benchmark runs end to end on a small model (numbers are not asserted: timings
belong to benchmarks, not tests)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, ServerProcess, missing, native_built, tool
from tests.serving.model_factory import AFFINE_CONFIG, add_model, affine

pytestmark = pytest.mark.slow  # each runs a benchmark command end to end


def test_bench_serving_writes_results(tmp_path: Path) -> None:
    native_built()
    tool("perf_analyzer", "perf_analyzer")
    tool("tritonclient", "python")
    repo = tmp_path / "model_repository"
    add_model(
        repo,
        "affine",
        AFFINE_CONFIG.format(
            scheduling="dynamic_batching { max_queue_delay_microseconds: 0 }", extra=""
        ),
        affine,
    )
    results = tmp_path / "results"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "bench",
            "serving",
            "--repository",
            str(repo),
            "--model",
            "affine",
            "--concurrency",
            "1,8",
            "--window-ms",
            "500",
            "--repeats",
            "1",
            "--seconds",
            "0.1",
            "--startup-repeats",
            "1",
            "--worker-repeats",
            "1",
            "--results-dir",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    assert data["served"]["frontend"] == data["summary"]["frontend"] == "native"
    frontends = data["frontends"]  # python and native, side by side, at c = 1 and 8
    assert set(frontends["median_per_s"]) == {"python", "native"}
    assert frontends["ratio_to_first"]["native"]["8"] > 0
    workers = data["workers"]  # 1 and 2 worker processes, at c = 8 only (c = 1 is skipped)
    assert set(workers["median_per_s"]) == {"1", "2"}
    assert set(workers["median_per_s"]["2"]) == {"8"} and workers["median_per_s"]["2"]["8"] > 0
    assert workers["ratio_to_first"]["2"]["8"] > 0
    assert data["summary"]["workers_throughput_c8"]["2"] > 0  # measured by perf_analyzer
    assert data["summary"]["batching_gain_c8"] > 0
    assert data["served"]["perf_analyzer"]["batching_on"]["8"]["csv"].startswith("Concurrency,")
    assert set(data["grpc_floor"]) == {"1", "8"}
    assert data["grpc_floor"]["1"]["inferences_per_s"] > 0
    assert data["native_floor"]["8"]["inferences_per_s"] > 0
    assert data["bare_floor"]["1"]["avg_latency_ms"] == data["summary"]["bare_floor_c1_ms"] > 0
    over_http = data["protocols"]  # perf_analyzer -i grpc and -i http on one server
    assert over_http["median_per_s"]["http"]["8"] > 0 and over_http["median_per_s"]["grpc"]["8"] > 0
    assert data["summary"]["http_to_grpc"]["1"] > 0
    if importlib.util.find_spec("matplotlib"):
        assert result.with_suffix(".png").stat().st_size > 1000


def test_perf_analyzer_retries_a_measurement_that_did_not_stabilise(tmp_path: Path) -> None:
    """perf_analyzer reports an unstable measurement on stderr; the bench then tries the next
    rung of its ladder instead of failing (a 0% spread never stabilises)."""
    from bench.serving import perf_analyzer, server

    tool("perf_analyzer", "perf_analyzer")
    repo = tmp_path / "model_repository"
    add_model(repo, "affine", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    with server(repo, tmp_path) as running:
        result = perf_analyzer(
            running["target"], "affine", 2, 100, tmp_path / "pa.csv", ladder=((0, 1), (1000, 2))
        )
    assert result["stability_percent"] == 1000 and result["window_ms"] == 200
    assert result["inferences_per_s"] > 0


def test_bench_accuracy_trains_scores_and_writes_results(
    tmp_path: Path, tiny_repository: Path
) -> None:
    """One tiny forecaster run on generated data and, when Multi30k is here (no test
    downloads), the tiny translator on 20 of its sentences: the suite's plumbing, not its
    numbers."""
    from training.data.sources import DatasetError, dataset_file

    try:
        dataset_file("multi30k/test_2016_flickr.de.gz", allow_download=False)
        translator = [
            "--translator",
            str(tiny_repository / "translator"),
            "--splits",
            "test_2016_flickr",
            "--limit",
            "20",
            "--beam-size",
            "2",
        ]
    except DatasetError:
        translator = []
    results = tmp_path / "results"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "bench",
            "accuracy",
            "--data",
            "synthetic",
            "--synthetic-rows",
            "1500",
            "--cells",
            "gru",
            "--seeds",
            "0,1",
            "--epochs",
            "1",
            "--threads",
            "1",
            *translator,
            "--results-dir",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (result,) = results.glob("accuracy-*.json")
    data = json.loads(result.read_text())
    (row,) = data["forecasters"]
    assert [r["seed"] for r in row["runs"]] == [0, 1]
    assert row["test_mse"][0] == pytest.approx(sum(r["test_mse"] for r in row["runs"]) / 2)
    assert all(r["test_mse"] < r["repeat_last_test_mse"] for r in row["runs"])
    assert "| synthetic | 96 | gru | 2 |" in out.stdout
    if translator:
        (tr,) = data["translator"]
        # The tiny numbers model's vocabulary spells Multi30k out piece by piece: most
        # sources are over its max_source_tokens and are counted, not silently cut.
        assert tr["sentences"] + tr["skipped_too_long"] == 20
        assert tr["beam_size"] == 2 and 0 <= tr["bleu"] <= 100


def test_bench_translator_engines_agree_and_measure(
    tmp_path: Path, tiny_repository: Path, tiny_translator_checkpoint: Path
) -> None:
    """Every engine decodes the same 8 sentences: greedy and beam-4 tokens are identical
    across PyTorch (uncached, cached), seqserve in process, CTranslate2 fp32 and the served
    model, and every cell measured a positive throughput and latency."""
    tool("tritonclient", "python")
    has_ct2 = importlib.util.find_spec("ctranslate2") is not None
    if not has_ct2:
        missing("ctranslate2", "the dev extra installs it (seqserve[bench])")
    results = tmp_path / "results"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "bench",
            "translator",
            "--checkpoint",
            str(tiny_translator_checkpoint),
            "--repository",
            str(tiny_repository),
            "--int8-model",
            "",
            "--source",
            "validation",
            "--sentences",
            "8",
            "--repeats",
            "1",
            "--seconds",
            "1",
            "--warmup-seconds",
            "0.2",
            "--results-dir",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (result,) = results.glob("translator-*.json")
    data = json.loads(result.read_text())

    engines = {"served", "seqserve", "pytorch_uncached", "pytorch_cached"}
    engines |= {"ct2_fp32", "ct2_int8"} if has_ct2 else set()
    assert set(data["results"]) == engines
    for engine, beams in data["results"].items():
        assert set(beams) == {"beam1", "beam4"}, engine
        for beam, cells in beams.items():
            assert set(cells) == ({"c1", "c8"} if engine == "served" else {"b1", "b8"})
            for setting, cell in cells.items():
                where = f"{engine} {beam} {setting}"
                assert cell["tokens_per_s"] > 0 and cell["sentences_measured"] > 0, where
                assert 0 < cell["latency_ms"]["p50"] <= cell["latency_ms"]["p99"], where

    tokens = data["agreement"]["greedy_tokens"]
    pairs = {"seqserve_vs_pytorch_uncached", "pytorch_cached_vs_pytorch_uncached"}
    pairs |= {"ct2_fp32_vs_pytorch_uncached"} if has_ct2 else set()
    assert set(tokens) == pairs
    for name, t in tokens.items():
        assert t["sentences"] == 8 and t["identical"] == 8 and t["tokens"] > 8, name
    beam4 = data["agreement"]["beam4_tokens"]  # the PyTorch beam baselines search as serving
    assert set(beam4) == pairs  # CTranslate2's own beam rule is recorded, not compared
    for name in ("seqserve_vs_pytorch_uncached", "pytorch_cached_vs_pytorch_uncached"):
        t = beam4[name]
        assert t["sentences"] == 8 and t["identical"] == 8 and t["tokens"] > 8, name
    texts = data["agreement"]["text_vs_seqserve_b1"]
    for engine in engines - {"ct2_int8"}:  # int8 may round differently
        assert texts[engine]["beam1"] and all(v == 1.0 for v in texts[engine]["beam1"].values()), (
            engine,
            texts[engine]["beam1"],
        )
    # served requests search as the in-process engines do (length penalty 0, not the
    # model's trained alpha): the same beam-4 texts
    assert all(v == 1.0 for v in texts["served"]["beam4"].values()), texts["served"]["beam4"]
    assert {
        "served_c8_vs_pytorch_uncached_b8_tokens",
        "served_c1_vs_pytorch_uncached_b1_latency",
    } <= set(data["ratios"])
    if has_ct2:
        assert data["conversion"]["seconds"] > 0
        assert "served_c8_vs_ct2_fp32_b8_tokens" in data["ratios"]
    assert data["settings"]["max_length"] > 0 and data["machine"]["load_avg"]
    if importlib.util.find_spec("matplotlib"):
        assert result.with_suffix(".png").stat().st_size > 1000


def test_bench_decoder_step_times_files_side_by_side(tmp_path: Path, tiny_repository: Path) -> None:
    """Two names for one decoder.onnx: the same log-probabilities, a JSON per row count."""
    decoder = tiny_repository / "translator" / "1" / "decoder.onnx"
    out = tmp_path / "step.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.decoder_step",
            f"a={decoder}",
            f"b={decoder}",
            "--rows",
            "1,3",
            "--past",
            "5",
            "--source",
            "4",
            "--calls",
            "50",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert sorted(result["rows"]) == ["1", "3"]
    for per_file in result["rows"].values():
        assert per_file["b"]["max_abs_diff_vs_first"] == 0.0
        assert per_file["a"]["median_ms"] > 0 and per_file["b"]["p90_ms"] > 0
    assert "| 3 | b |" in run.stdout


def test_bench_train_sweep_summarizes_each_run_and_keeps_failures(tmp_path: Path) -> None:
    """Two tiny runs and one refused one: a summary line each, the failure with its status."""
    out = tmp_path / "sweep"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.train_sweep",
            "--out",
            str(out),
            "--jobs",
            "2",
            "--common",
            "--preset tiny --max-steps 6 --length-penalty-grid 0,1 --threads 1 --quiet",
            "a=",
            "b=--seed 1 --label-smoothing 0.2",
            "bad=--max-source-tokens 999",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr
    lines = {line["name"]: line for line in map(json.loads, (out / "summary.jsonl").open())}
    assert sorted(lines) == ["a", "b", "bad"]
    for name in ("a", "b"):
        assert lines[name]["rc"] == 0 and lines[name]["steps"] == 6
        assert sorted(lines[name]["val_bleu_by_alpha"]) == ["0.0", "1.0"]
        assert lines[name]["length_penalty"] in (0.0, 1.0) and "bleu" in lines[name]
    assert lines["b"]["flags"] == "--seed 1 --label-smoothing 0.2"
    assert lines["bad"]["rc"] == 2 and "bleu" not in lines["bad"]
    assert "max_source_tokens 999" in (out / "bad.log").read_text()


def test_bench_gpu_dry_run_compares_devices_and_serves(
    tmp_path: Path, tiny_repository: Path
) -> None:
    """`bench/gpu.py --cpu-only`: the GPU check's every stage runs (its "cuda" side on the CPU
    provider, the translator's cache binding forced), so the script a GPU session relies on
    does not rot between loans."""
    out = tmp_path / "gpu.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu",
            "--cpu-only",
            "--model-repository",
            str(tiny_repository),
            "--translator",
            str(tiny_repository / "translator" / "1"),
            "--repeats",
            "2",
            "--clients",
            "2",
            "--seconds",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["onnx_models"]) == {"forecaster_gru", "forecaster_lstm"}
    assert all(r["max_abs_diff_b64"] == 0.0 for r in report["onnx_models"].values())
    for result in report["translators"].values():
        assert result["io_binding"] == {"cpu": False, "cuda": True, "cuda_run": False}
        for beam in (1, 4):
            assert result[f"same_text_beam{beam}"] == {"cuda": 64, "cuda_run": 64}
        assert set(result["decoder_step_ms"]) == {"R1", "R8", "R64"}
    [load] = report["served_load"].values()
    assert load["cpu"]["requests_per_s"] > 0 and load["cuda"]["exit_code"] == 0
    server = report["server"]
    assert server["exit_code"] == 0 and server["translator"] == {"same_text": 8, "sentences": 8}
    assert len(server["providers_logged"]) == 3


def test_bench_soak_summary_separates_what_faults_cause() -> None:
    from bench.soak import Record, summarize

    record = Record(
        calls=[
            (1.0, "v2", "OK", 0.002),
            (1.5, "translate", "OK", 0.02),
            (9.0, "translate", "UNAVAILABLE", 1.5),  # in flight when the engine died
            (10.5, "translate", "UNAVAILABLE", 0.001),  # right after the engine's kill
            (11.0, "stream", "UNAVAILABLE", 0.001),
            (30.0, "translate", "UNAVAILABLE", 0.001),  # long after: not the fault's
            (31.0, "v2", "INTERNAL", 0.001),
        ],
        live=[(t / 10, 0.001) for t in range(400)],
        rss=[(t, 100.0, 50.0) for t in range(0, 40, 2)],
        faults=[(10.0, "engine SIGKILL")],
        messages={30.0: "engine gone"},
    )
    result = summarize(record, seconds=40, warmup_s=5, window_s=10, fault_window_s=5)
    assert result["caused_by_faults"] == {
        "translate": {"UNAVAILABLE": 2},
        "stream": {"UNAVAILABLE": 1},
    }
    assert result["unexpected_errors"] == {"translate": {"UNAVAILABLE": 1}, "v2": {"INTERNAL": 1}}
    assert result["unexpected_at"] == [
        (30.0, "translate", "UNAVAILABLE", "engine gone"),
        (31.0, "v2", "INTERNAL", ""),
    ]
    assert result["rss_mib"]["growth"] == 0
    assert result["goals"] == {
        "rss_growth_under_5pct": True,
        "only_fault_failures": False,
        "fault_failures_retryable": True,
        "live_p99_under_50ms": True,
    }


def test_bench_soak_runs_with_its_faults(tiny_repository: Path, tmp_path: Path) -> None:
    """A short soak on the tiny default repository: every fault injected, every call
    answered, ServerLive probed throughout (numbers are the benchmark's, not asserted)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "bench",
            "soak",
            "--repository",
            str(tiny_repository),
            "--minutes",
            "0.3",
            "--clients",
            "8",
            "--engine-stall-secs",
            "3",
            "--warmup-secs",
            "5",
            "--window-secs",
            "5",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (result,) = tmp_path.glob("soak-*.json")
    data = json.loads(result.read_text())
    assert [name for _, name in data["faults"]] == [
        "engine SIGKILL",
        "engine SIGSTOP 10 s",
        "corrupt new version",
        "good new version",
    ]
    assert all(n > 0 for n in data["calls"].values()), data["calls"]
    assert data["lost_ids"] == 0 and data["unfinished_streams"] == 0
    assert data["live"]["probes"] > 100 and data["live"]["failures"] == 0
    assert data["exit_code"] == 0
    assert data["rss_series"] and list(tmp_path.glob("soak-*.png"))
    assert out.returncode in (0, 1), out.stdout[-2000:] + out.stderr[-2000:]


def test_typed_forecast_is_measured_beside_v2(tiny_server: ServerProcess) -> None:
    """The same client, the same forecaster and window on both sides: each API answered
    without errors, and a ratio per concurrency."""
    from bench.typed_load import typed_vs_v2

    result = typed_vs_v2(tiny_server.target, "forecaster_gru", [1, 2], seconds=0.3, repeats=1)
    assert result["errors"] == 0
    for api in ("v2", "typed"):
        assert all(result["median_per_s"][api][c] > 0 for c in ("1", "2")), result
    assert set(result["typed_to_v2"]) == {"1", "2"} and result["typed_to_v2"]["2"] > 0


def test_bench_accuracy_puts_classical_baselines_beside_the_model(tmp_path: Path) -> None:
    """A quarterly CSV that is a straight line plus a little noise: ARIMA with drift and a
    damped-trend ETS follow the line where repeating the last value lags behind it, so their
    numbers are real forecasts, scored on the model's own test windows with coverage."""
    rng = np.random.default_rng(0)
    quarters = np.arange("1980-01", "2020-01", 3, dtype="datetime64[M]")  # 160 quarter starts
    level = 10 + 0.5 * np.arange(len(quarters)) + rng.normal(0, 0.2, len(quarters))
    csv = tmp_path / "line.csv"
    csv.write_text(
        "date,y\n" + "".join(f"{q}-01,{v:.4f}\n" for q, v in zip(quarters, level, strict=True))
    )
    results = tmp_path / "results"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "bench",
            "accuracy",
            "--data",
            str(csv),
            "--features",
            "S",
            "--target",
            "y",
            "--horizons",
            "0",
            "--cells",
            "gru",
            "--seeds",
            "0,1",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--quantiles",
            "0.1,0.5,0.9",
            "--baselines",
            "ets,arima",
            "--results-dir",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (result,) = results.glob("accuracy-*.json")
    comparison, second_seed = json.loads(result.read_text())["baselines"]
    # the classical forecasts do not depend on the seed: made once, scored for both
    assert second_seed["scores"]["arima"] == comparison["scores"]["arima"]
    assert second_seed["scores"]["model"] != comparison["scores"]["model"]
    scores = comparison["scores"]
    assert set(scores) == {"model", "repeat_last", "seasonal_naive", "ets", "arima"}
    assert comparison["windows"] == comparison["of_windows"] > 10  # every test window
    assert scores["arima"]["mse"] < 0.2 * scores["repeat_last"]["mse"]
    assert scores["ets"]["mse"] < 0.5 * scores["repeat_last"]["mse"]
    for name in ("model", "ets", "arima"):
        assert 0 <= scores[name]["test_coverage_0.9"] <= 1
        assert scores[name]["test_interval_width_0.1_0.9"] > 0
    assert "test_coverage_0.9" not in scores["repeat_last"]
    assert "with drift" in comparison["fitted"]["arima"]["models"][0]
    assert "| arima (ARIMA(" in out.stdout


def test_bench_training_runs_each_layout_and_compares_it_with_the_first(tmp_path: Path) -> None:
    """One layout, two processes under torchrun, on a small TSV corpus of the user's kind
    (test_distributed.py holds one process against two: the same steps and tokens)."""
    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("".join(f"{w} {w}x\t{w}x {w}\n" for w in map(str, range(400))))
    run = subprocess.run(
        [
            *(sys.executable, "-m", "seqserve", "bench", "training", "--preset", "tiny"),
            *("--data", str(corpus)),
            *("--steps", "3", "--repeats", "1", "--layouts", "2x1"),
            *("--results-dir", str(tmp_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = tmp_path.glob("training-tiny-*.json")
    result = json.loads(path.read_text())
    (two,) = result["runs"]["2x1"]
    assert two["processes"] == 2 and two["threads"] == 1 and two["steps"] == 3
    assert two["target_tokens"] > 0 and two["seconds"] > two["validation_seconds"]
    assert result["summary"]["2x1"] == {
        "tokens_per_second": two["tokens_per_second"],
        "ratio_to_2x1": 1.0,
    }
