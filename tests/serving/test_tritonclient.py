"""Triton's own client talks to seqserve unchanged (run from its tool venv: its protobuf and
generated `inference.*` classes cannot share a process with ours)."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import ServerProcess, tool

SCRIPT = """
import json, sys
import tritonclient.grpc as grpcclient
c = grpcclient.InferenceServerClient(sys.argv[1])
meta = c.get_server_metadata()
print(json.dumps({"live": c.is_server_live(), "ready": c.is_server_ready(),
                  "name": meta.name, "version": meta.version,
                  "extensions": list(meta.extensions)}))
"""


def test_tritonclient_sees_a_live_ready_server(server: ServerProcess) -> None:
    python = tool("tritonclient")
    out = subprocess.run([str(python), "-c", SCRIPT, server.target], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["live"] is True and got["ready"] is True
    assert got["name"] == "seqserve" and got["version"]


def test_perf_analyzer_binary_runs() -> None:
    """The bundled binary finds its libraries (libb64 from Debian, libcudart from pip)."""
    import os

    exe = tool("perf_analyzer", "perf_analyzer")
    env = dict(os.environ, LD_LIBRARY_PATH=perf_analyzer_library_path())
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert "2.51.0" in out.stdout + out.stderr


def perf_analyzer_library_path() -> str:
    venv = tool("perf_analyzer").parent.parent
    libs = sorted(venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    assert libs, "nvidia-cuda-runtime-cu12 missing from the perf_analyzer venv"
    return str(libs[0])
