"""The V2 protocol end to end against a real server process (the project's own stubs)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from tests.conftest import ServerProcess
from tests.serving.v2 import call_error, outputs, request, scrape, stub


@pytest.fixture(scope="module")
def v2(standard_server: ServerProcess) -> Iterator:
    channel, s = stub(standard_server.target)
    with channel:
        yield s


def test_model_metadata_and_config(v2) -> None:  # noqa: ANN001
    meta = v2.ModelMetadata(pb.ModelMetadataRequest(name="affine"), timeout=5)
    assert meta.name == "affine" and list(meta.versions) == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [t.name for t in meta.outputs] == ["y", "z"]
    cfg = v2.ModelConfig(pb.ModelConfigRequest(name="affine"), timeout=5).config
    assert cfg.name == "affine" and cfg.max_batch_size == 8
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000


def test_infer_raw(v2) -> None:  # noqa: ANN001
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    reply = v2.ModelInfer(request("affine", rid="req-7", x=x), timeout=5)
    assert (reply.model_name, reply.model_version, reply.id) == ("affine", "1", "req-7")
    got = outputs(reply)
    np.testing.assert_array_equal(got["y"], 2 * x + 1)
    np.testing.assert_array_equal(got["z"], x.sum(1, keepdims=True))


def test_infer_typed_contents_and_output_selection(v2) -> None:  # noqa: ANN001
    msg = pb.ModelInferRequest(model_name="affine_nobatch")
    t = msg.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    t.contents.fp32_contents.extend([1, 2, 3, 4])
    msg.outputs.add(name="z")
    got = outputs(v2.ModelInfer(msg, timeout=5))
    assert list(got) == ["z"] and got["z"].tolist() == [[10.0]]


def test_bytes_round_trip(v2) -> None:  # noqa: ANN001
    text = np.array([["grüß dich".encode()], [b""], [b"zwei\x00drei"]], dtype=object)
    got = outputs(v2.ModelInfer(request("echo", text=text), timeout=5))
    assert got["echo"].reshape(-1).tolist() == [b"gr\xc3\xbc\xc3\x9f dich", b"", b"zwei\x00drei"]


def test_stream_infer_one_response_per_request(v2) -> None:  # noqa: ANN001
    x = np.ones((1, 4), np.float32)
    reqs = [
        request("affine", rid="a", x=x),
        request("nope", rid="b", x=x),
        request("affine", rid="c", x=x),
    ]
    replies = list(v2.ModelStreamInfer(iter(reqs), timeout=10))
    assert [r.infer_response.id for r in replies] == ["a", "b", "c"]
    assert replies[0].error_message == "" and replies[2].error_message == ""
    assert "unknown model 'nope'" in replies[1].error_message


def test_repository_index_reports_broken_models(v2) -> None:  # noqa: ANN001
    index = v2.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5)
    states = {m.name: (m.state, m.reason) for m in index.models}
    assert states["affine"] == ("READY", "")
    assert states["corrupt"][0] == "UNAVAILABLE" and "cannot load" in states["corrupt"][1]
    assert states["mismatch"][0] == "UNAVAILABLE" and "'wrong'" in states["mismatch"][1]
    ready = v2.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=5)
    assert "corrupt" not in {m.name for m in ready.models}


def test_model_ready(v2) -> None:  # noqa: ANN001
    def ready(name: str, version: str = "") -> bool:
        return v2.ModelReady(pb.ModelReadyRequest(name=name, version=version), timeout=5).ready

    assert ready("affine") and ready("affine", "1")
    assert not ready("affine", "2") and not ready("corrupt") and not ready("nope")


def test_health_per_model(standard_server: ServerProcess) -> None:
    from serving.probe import check

    assert check(standard_server.target, "affine")[1] == "SERVING"
    assert check(standard_server.target, "corrupt")[1] == "NOT_SERVING"


def test_load_unload_need_explicit_mode(v2) -> None:  # noqa: ANN001
    err = call_error(
        v2.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="affine"), timeout=5
    )
    assert err.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "--model-control-mode explicit" in err.details()


def test_statistics_agree_with_metrics(v2, standard_server: ServerProcess) -> None:  # noqa: ANN001
    x = np.ones((3, 4), np.float32)
    for _ in range(4):
        v2.ModelInfer(request("affine_nobatch", x=x), timeout=5)
    stats = v2.ModelStatistics(pb.ModelStatisticsRequest(name="affine_nobatch"), timeout=5)
    (s,) = stats.model_stats
    assert (s.name, s.version) == ("affine_nobatch", "1")
    assert s.inference_count >= 12 and s.execution_count >= 4
    assert s.inference_stats.success.count >= 4 and s.last_inference > 0
    assert s.inference_stats.compute_infer.ns > 0
    assert 3 in {b.batch_size for b in s.batch_stats}
    samples = scrape(standard_server.metrics_url)
    labels = "model=affine_nobatch,version=1"
    assert samples[("nv_inference_count", labels)] == s.inference_count
    assert samples[("nv_inference_exec_count", labels)] == s.execution_count
    assert samples[("nv_inference_request_success", labels)] == s.inference_stats.success.count
    assert (
        samples[("nv_inference_compute_infer_duration_us", labels)]
        == s.inference_stats.compute_infer.ns // 1000
    )


TRITON_SERIES = {
    "nv_inference_request_success": "counter",
    "nv_inference_request_failure": "counter",
    "nv_inference_count": "counter",
    "nv_inference_exec_count": "counter",
    "nv_inference_request_duration_us": "counter",
    "nv_inference_queue_duration_us": "counter",
    "nv_inference_compute_input_duration_us": "counter",
    "nv_inference_compute_infer_duration_us": "counter",
    "nv_inference_compute_output_duration_us": "counter",
    "nv_inference_pending_request_count": "gauge",
    "seqserve_request_duration_seconds": "histogram",
    "seqserve_queue_duration_seconds": "histogram",
    "seqserve_batch_size": "histogram",
    "seqserve_model_ready": "gauge",
    "seqserve_queue_size": "gauge",
    "seqserve_queue_capacity": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
}


def test_metric_names_types_and_labels(v2, standard_server: ServerProcess) -> None:  # noqa: ANN001
    v2.ModelInfer(request("affine", x=np.ones((1, 4), np.float32)), timeout=5)
    with urllib.request.urlopen(standard_server.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    # Triton's exact sample names: no `_total` suffix on its counters.
    assert "\nnv_inference_count{" in text and "nv_inference_count_total" not in text
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    for name, kind in TRITON_SERIES.items():
        assert types.get(name) == kind, name
    for (name, labels), _ in scrape(standard_server.metrics_url).items():
        if name.startswith(("nv_", "seqserve_")):
            keys = {kv.split("=")[0] for kv in labels.split(",") if kv}
            # (`method`: the native front end's in-process methods, a fixed few)
            assert keys <= {"model", "version", "reason", "le", "method"}, (name, labels)
    ready = [ln for ln in text.splitlines() if ln.startswith("seqserve_model_ready{")]
    assert any('model="affine"' in ln and ln.endswith(" 1.0") for ln in ready)
    assert any('model="corrupt"' in ln and ln.endswith(" 0.0") for ln in ready)


def test_latency_series_exist_from_load(tmp_path: Path) -> None:
    """A model's latency histograms are listed at zero before its first request, like the
    nv_inference_* counters, so dashboards and alert rules see idle models too."""
    from tests.serving.model_factory import AFFINE_CONFIG, add_model, affine

    add_model(tmp_path / "repo", "affine", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    srv = ServerProcess(tmp_path / "repo")
    try:
        srv.wait_ready()
        samples = scrape(srv.metrics_url)
    finally:
        srv.terminate()
    labels = "model=affine,version=1"
    for name in (
        "seqserve_request_duration_seconds_count",
        "seqserve_queue_duration_seconds_count",
        "nv_inference_count",
    ):
        assert samples[(name, labels)] == 0, name
