"""seqserve beside the real Triton (the `tritonserver` 2.51 binary that PyTriton's wheel ships,
in its tool venv): the same calls, made by tritonclient over gRPC and HTTP to both servers,
started with the same restricted-protocol flags. Where seqserve claims Triton's behaviour (the
restricted protocols' header convention, the status of each model-less error) the answers must
agree; where it differs on purpose, the difference is the one docs/serving.md ("Where seqserve
differs from Triton") states. A release of either that moves an answer fails here."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, free_port, tool

pytestmark = pytest.mark.slow  # two servers in subprocesses

RESTRICTED = "model-repository,model-config:admin-key=s3cret"

# Each call: a name and what tritonclient does; the script prints {name: [code, message]},
# the code a gRPC status name or an HTTP status, "OK"/200 for a success.
PROBE = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

g = grpcclient.InferenceServerClient(sys.argv[1])
h = httpclient.InferenceServerClient(sys.argv[2])
KEY = "s3cret"
x = grpcclient.InferInput("x", [1, 3], "FP32")
x.set_data_from_numpy(np.zeros((1, 3), np.float32))
xh = httpclient.InferInput("x", [1, 3], "FP32")
xh.set_data_from_numpy(np.zeros((1, 3), np.float32))
calls = {
    "grpc index, no header": lambda: g.get_model_repository_index(),
    "grpc index, bare key": lambda: g.get_model_repository_index(headers={"admin-key": KEY}),
    "grpc index, wrong value": lambda: g.get_model_repository_index(
        headers={"triton-grpc-protocol-admin-key": "nope"}),
    "grpc index, Triton's header": lambda: g.get_model_repository_index(
        headers={"triton-grpc-protocol-admin-key": KEY}),
    "grpc config, no header": lambda: g.get_model_config("nope"),
    "grpc live": lambda: g.is_server_live(),
    "grpc ready unknown": lambda: g.is_model_ready("nope"),
    "grpc metadata unknown": lambda: g.get_model_metadata("nope"),
    "grpc config unknown": lambda: g.get_model_config(
        "nope", headers={"triton-grpc-protocol-admin-key": KEY}),
    "grpc infer unknown": lambda: g.infer("nope", [x]),
    "grpc statistics unknown": lambda: g.get_inference_statistics("nope"),
    "grpc load unknown": lambda: g.load_model(
        "nope", headers={"triton-grpc-protocol-admin-key": KEY}),
    "grpc unload unknown": lambda: g.unload_model(
        "nope", headers={"triton-grpc-protocol-admin-key": KEY}),
    "grpc shared memory": lambda: g.get_system_shared_memory_status(),
    "grpc trace": lambda: g.get_trace_settings(),
    "http index, no header": lambda: h.get_model_repository_index(),
    "http index, Triton's gRPC header": lambda: h.get_model_repository_index(
        headers={"triton-grpc-protocol-admin-key": KEY}),
    "http index, bare key": lambda: h.get_model_repository_index(headers={"admin-key": KEY}),
    "http config, no header": lambda: h.get_model_config("nope"),
    "http live": lambda: h.is_server_live(),
    "http ready unknown": lambda: h.is_model_ready("nope"),
    "http metadata unknown": lambda: h.get_model_metadata("nope"),
    "http config unknown": lambda: h.get_model_config("nope", headers={"admin-key": KEY}),
    "http infer unknown": lambda: h.infer("nope", [xh]),
    "http statistics unknown": lambda: h.get_inference_statistics("nope"),
    "http load unknown": lambda: h.load_model("nope", headers={"admin-key": KEY}),
    "http unload unknown": lambda: h.unload_model("nope", headers={"admin-key": KEY}),
}
out = {}
for name, f in calls.items():
    try:
        f()
        out[name] = ["OK" if name.startswith("grpc") else 200, ""]
    except InferenceServerException as e:
        status = e.status() or ""
        out[name] = [status.replace("StatusCode.", "") if name.startswith("grpc")
                     else int(status), e.message() or ""]
print(json.dumps(out))
"""

# Where seqserve answers otherwise, on purpose (docs/serving.md, "Where seqserve differs from
# Triton"): the call -> (Triton's code, seqserve's).
DIFFERENCES = {
    # Our client retries UNAVAILABLE; a missing key does not heal by retrying.
    "grpc index, no header": ("UNAVAILABLE", "PERMISSION_DENIED"),
    "grpc index, bare key": ("UNAVAILABLE", "PERMISSION_DENIED"),
    "grpc index, wrong value": ("UNAVAILABLE", "PERMISSION_DENIED"),
    "grpc config, no header": ("UNAVAILABLE", "PERMISSION_DENIED"),
    # An unknown name is NOT_FOUND for every RPC that takes one.
    "grpc statistics unknown": ("INVALID_ARGUMENT", "NOT_FOUND"),
    "http statistics unknown": (400, 404),
    "grpc load unknown": ("INTERNAL", "NOT_FOUND"),
    "http load unknown": (500, 404),
    # Triton answers OK for a name it has never heard of; seqserve only for a model of its
    # repository that is not loaded (a typo is not an unload).
    "grpc unload unknown": ("OK", "NOT_FOUND"),
    "http unload unknown": (200, 404),
    # Extensions seqserve does not implement.
    "grpc shared memory": ("OK", "UNIMPLEMENTED"),
    "grpc trace": ("OK", "UNIMPLEMENTED"),
}


def _tritonserver() -> Path:
    venv = tool("triton").parent.parent
    found = sorted(venv.glob("lib/python*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    assert found, f"no tritonserver binary in {venv}"
    return found[0]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, str]]:
    """(Triton's gRPC target, its HTTP address, seqserve's gRPC target, its HTTP address)."""
    binary = _tritonserver()
    root = tmp_path_factory.mktemp("parity")
    for side in ("triton", "seqserve"):
        (root / side).mkdir()
    grpc_port, http_port = free_port(), free_port()
    log = (root / "triton.log").open("w")
    triton = subprocess.Popen(
        [
            str(binary),
            f"--model-repository={root / 'triton'}",
            "--model-control-mode=explicit",
            "--allow-metrics=false",
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            f"--grpc-restricted-protocol={RESTRICTED}",
            f"--http-restricted-api={RESTRICTED}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ours = ServerProcess(
        root / "seqserve",
        "--model-control-mode",
        "explicit",
        f"--grpc-restricted-protocol={RESTRICTED}",
        f"--http-restricted-api={RESTRICTED}",
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert triton.poll() is None, (root / "triton.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/live"):
                    break
            except OSError:
                assert time.monotonic() < deadline, (root / "triton.log").read_text()
                time.sleep(0.2)
        ours.wait_ready()
        yield (
            f"127.0.0.1:{grpc_port}",
            f"127.0.0.1:{http_port}",
            ours.target,
            f"127.0.0.1:{ours.http_port}",
        )
    finally:
        triton.terminate()
        triton.wait(30)
        log.close()
        ours.terminate()


def _answers(grpc_target: str, http_address: str) -> dict[str, list]:
    run = subprocess.run(
        [str(tool("tritonclient")), "-c", PROBE, grpc_target, http_address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def answers(servers: tuple[str, str, str, str]) -> tuple[dict[str, list], dict[str, list]]:
    """(Triton's answers, seqserve's)."""
    triton_grpc, triton_http, our_grpc, our_http = servers
    return _answers(triton_grpc, triton_http), _answers(our_grpc, our_http)


def test_seqserve_answers_as_triton_does_but_where_the_docs_say(
    answers: tuple[dict[str, list], dict[str, list]],
) -> None:
    theirs, ours = answers
    assert theirs.keys() == ours.keys()
    for name in theirs:
        got = (theirs[name][0], ours[name][0])
        want = DIFFERENCES.get(name, (theirs[name][0], theirs[name][0]))
        assert got == want, f"{name}: Triton {theirs[name]}, seqserve {ours[name]}"


def test_a_restricted_call_names_tritons_header(
    answers: tuple[dict[str, list], dict[str, list]],
) -> None:
    """The message of a refused call names the header the caller must send, as Triton's does:
    `triton-grpc-protocol-<key>` over gRPC, the bare key over HTTP."""
    theirs, ours = answers
    for name, header in (
        ("grpc index, no header", "'triton-grpc-protocol-admin-key'"),
        ("http index, no header", "'admin-key'"),
    ):
        assert header in theirs[name][1], theirs[name]
        assert header in ours[name][1], ours[name]
