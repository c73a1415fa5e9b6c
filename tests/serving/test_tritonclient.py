"""Triton's own tools talk to seqserve unchanged. They run from their tool venvs (their
protobuf and generated `inference.*` classes cannot share a process with ours)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, free_port, missing, tool
from tests.serving.model_factory import AFFINE_CONFIG, add_model, affine, standard_repository

pytestmark = pytest.mark.slow  # tool venvs driven as subprocesses

SERVER_CALLS = """
import json, sys
import tritonclient.grpc as grpcclient
c = grpcclient.InferenceServerClient(sys.argv[1])
meta = c.get_server_metadata()
print(json.dumps({"live": c.is_server_live(), "ready": c.is_server_ready(),
                  "name": meta.name, "version": meta.version,
                  "extensions": list(meta.extensions)}))
"""

MODEL_CALLS = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
c = grpcclient.InferenceServerClient(sys.argv[1])
out = {}
meta = c.get_model_metadata("affine", as_json=True)
out["inputs"] = [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]]
out["max_batch_size"] = c.get_model_config("affine", as_json=True)["config"]["max_batch_size"]
x = np.arange(8, dtype=np.float32).reshape(2, 4)
inp = grpcclient.InferInput("x", [2, 4], "FP32"); inp.set_data_from_numpy(x)
res = c.infer("affine", [inp], request_id="r1",
              outputs=[grpcclient.InferRequestedOutput("y")])
out["y"] = res.as_numpy("y").tolist(); out["id"] = res.get_response().id
text = np.array([["grüß".encode()], [b"x"]], dtype=object)
t = grpcclient.InferInput("text", [2, 1], "BYTES"); t.set_data_from_numpy(text)
out["echo"] = [v.decode() for v in c.infer("echo", [t]).as_numpy("echo").reshape(-1)]
stats = c.get_inference_statistics("affine", as_json=True)["model_stats"][0]
out["inference_count"] = int(stats["inference_count"])
index = c.get_model_repository_index(as_json=True)["models"]
out["index"] = {m["name"]: m.get("state", "") for m in index}
out["ready_corrupt"] = c.is_model_ready("corrupt")
try:
    c.infer("nope", [inp])
except InferenceServerException as e:
    out["unknown"] = [e.status(), e.message()]
try:
    c.unload_model("affine")
except InferenceServerException as e:
    out["unload"] = e.status()
results = []
c.start_stream(callback=lambda result, error: results.append((result, error)))
for i in range(3):
    c.async_stream_infer("affine", [inp], request_id=f"s{i}")
c.stop_stream()
out["stream"] = sorted(r.get_response().id for r, e in results if e is None)
print(json.dumps(out))
"""

LOAD_CALLS = """
import json, sys
import tritonclient.grpc as grpcclient
c = grpcclient.InferenceServerClient(sys.argv[1])
out = {"before": c.is_model_ready("affine")}
c.load_model("affine"); out["loaded"] = c.is_model_ready("affine")
c.unload_model("affine"); out["unloaded"] = not c.is_model_ready("affine")
print(json.dumps(out))
"""

TRANSLATOR_CALLS = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
c = grpcclient.InferenceServerClient(sys.argv[1])
sources = json.loads(sys.argv[2])
out = {"inputs": [(t.name, t.datatype, list(t.shape))
                  for t in c.get_model_metadata("translator").inputs]}
def text(rows):
    t = grpcclient.InferInput("text", [len(rows), 1], "BYTES")
    t.set_data_from_numpy(np.array([[r] for r in rows], dtype=object))
    return t
for beam in (1, 4):
    res = c.infer("translator", [text([s.encode() for s in sources])],
                  parameters={"beam_size": beam})
    out[f"beam{beam}"] = [v.decode() for v in res.as_numpy("translation").reshape(-1)]
    out[f"score{beam}"] = res.as_numpy("score").reshape(-1).tolist()
    out[f"shape{beam}"] = list(res.as_numpy("translation").shape)
for name, rows, params in (("utf8", [b"\\xff\\xfe"], None),
                           ("too_long", ["dreihundert ".encode() * 200], None),
                           ("beam", [b"vier"], {"beam_size": 0})):
    try:
        c.infer("translator", [text(rows)], parameters=params)
    except InferenceServerException as e:
        out[name] = [e.status(), e.message()]
print(json.dumps(out))
"""


def _run(script: str, target: str, *args: str) -> dict:
    python = tool("tritonclient")
    out = subprocess.run(
        [str(python), "-c", script, target, *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_tritonclient_server_calls(server: ServerProcess) -> None:
    got = _run(SERVER_CALLS, server.target)
    assert got["live"] is True and got["ready"] is True
    assert got["name"] == "seqserve" and got["version"]
    assert "statistics" in got["extensions"] and "system_shared_memory" not in got["extensions"]


def test_tritonclient_model_calls(standard_server: ServerProcess) -> None:
    got = _run(MODEL_CALLS, standard_server.target)
    # (protobuf JSON renders int64 as strings)
    assert got["inputs"] == [["x", "FP32", ["-1", "4"]]] and got["max_batch_size"] == 8
    assert got["y"] == [[1.0, 3.0, 5.0, 7.0], [9.0, 11.0, 13.0, 15.0]] and got["id"] == "r1"
    assert got["echo"] == ["grüß", "x"]
    assert got["inference_count"] >= 2
    assert got["index"]["affine"] == "READY" and got["index"]["corrupt"] == "UNAVAILABLE"
    assert got["ready_corrupt"] is False
    assert got["unknown"][0] == "StatusCode.NOT_FOUND" and "nope" in got["unknown"][1]
    assert got["unload"] == "StatusCode.UNIMPLEMENTED"
    assert got["stream"] == ["s0", "s1", "s2"]


def test_tritonclient_translator(tiny_server: ServerProcess, tiny_repository: Path) -> None:
    """BYTES in, BYTES and FP32 out through plain tritonclient, with the `beam_size` request
    parameter: the same translations and scores as the decoder run in this process on the
    same version, and bad input refused with INVALID_ARGUMENT naming what is wrong."""
    import onnxruntime as ort

    from serving.models.onnx_step_model import load_translator

    sources = ["dreihundertzweiundvierzig", "sieben", "neunzehntausendvierhundertelf"]
    got = _run(TRANSLATOR_CALLS, tiny_server.target, json.dumps(sources))
    assert got["inputs"] == [["text", "BYTES", [-1, 1]]]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    local = load_translator(
        tiny_repository / "translator" / "1",
        session_options=opts,
        providers=["CPUExecutionProvider"],
    )
    for beam in (1, 4):
        want = local.translate(sources, beam_size=beam)
        assert got[f"shape{beam}"] == [len(sources), 1]
        assert got[f"beam{beam}"] == [r.text for r in want] and all(got[f"beam{beam}"])
        assert got[f"score{beam}"] == pytest.approx([r.score for r in want], abs=1e-4)
    assert got["utf8"][0] == "StatusCode.INVALID_ARGUMENT" and "UTF-8" in got["utf8"][1]
    assert got["too_long"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "max_source_tokens" in got["too_long"][1]
    assert got["beam"][0] == "StatusCode.INVALID_ARGUMENT" and "beam_size" in got["beam"][1]


def test_tritonclient_load_unload(tmp_path: Path) -> None:
    repo = tmp_path / "model_repository"
    add_model(repo, "affine", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    server = ServerProcess(repo, "--model-control-mode", "explicit")
    try:
        server.wait_ready()
        assert _run(LOAD_CALLS, server.target) == {
            "before": False,
            "loaded": True,
            "unloaded": True,
        }
    finally:
        server.terminate()


def perf_analyzer_env() -> dict[str, str]:
    venv = tool("perf_analyzer").parent.parent
    libs = sorted(venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    assert libs, "nvidia-cuda-runtime-cu12 missing from the perf_analyzer venv"
    return dict(os.environ, LD_LIBRARY_PATH=str(libs[0]))


def test_perf_analyzer_binary_runs() -> None:
    """The bundled binary finds its libraries (libb64 from Debian, libcudart from pip)."""
    exe = tool("perf_analyzer", "perf_analyzer")
    out = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, timeout=60, env=perf_analyzer_env()
    )
    assert out.returncode == 0, out.stderr
    assert "2.51.0" in out.stdout + out.stderr


def test_perf_analyzer_measures_a_model(standard_server: ServerProcess, tmp_path: Path) -> None:
    """A fixed count of requests, not time windows: perf_analyzer gives up on windows whose
    throughput swings more than -s percent, which a machine under uneven load does."""
    exe = tool("perf_analyzer", "perf_analyzer")
    csv = tmp_path / "perf.csv"
    out = subprocess.run(
        [
            str(exe),
            "-m",
            "affine",
            "-u",
            standard_server.target,
            "-i",
            "grpc",
            "-b",
            "1",
            "--concurrency-range",
            "2",
            "--request-count",
            "200",
            "-f",
            str(csv),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=perf_analyzer_env(),
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Throughput" in out.stdout
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("Concurrency,Inferences/Second") and len(rows) >= 2


def test_prometheus_scrapes_the_metrics(standard_server: ServerProcess, tmp_path: Path) -> None:
    import shutil

    exe = shutil.which("prometheus")
    if exe is None:
        missing("prometheus", "run `make tools` (tests/tools/setup.sh)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: seqserve\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{standard_server.metrics_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path}/db",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        query = (
            f"http://127.0.0.1:{port}/api/v1/query?query="
            "nv_inference_request_success%7Bmodel%3D%22affine%22%7D"
        )
        deadline = time.monotonic() + 30
        result: list = []
        while time.monotonic() < deadline and not result:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(query, timeout=2) as resp:
                    result = json.load(resp)["data"]["result"]
            except OSError:
                continue
        assert result, "Prometheus never returned nv_inference_request_success for affine"
        assert result[0]["metric"]["model"] == "affine" and result[0]["metric"]["version"] == "1"
    finally:
        proc.terminate()
        proc.wait(10)


def test_standard_repository_builds(tmp_path: Path) -> None:
    repo = standard_repository(tmp_path / "r")
    assert (repo / "affine" / "1" / "model.onnx").is_file()
