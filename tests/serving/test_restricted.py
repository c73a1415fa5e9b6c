"""Triton's restricted protocols (`--grpc-restricted-protocol`): a restricted RPC without its
header is refused with PERMISSION_DENIED naming the header, on both front ends (the native
one checks before its fast path), and tritonclient's `headers=` opens it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as fgrpc
from serving import restricted
from tests.conftest import ServerProcess, native_built, tool
from tests.serving.model_factory import add_forecaster, standard_repository
from tests.serving.v2 import call_error, outputs, request, stub

ADMIN = ("triton-grpc-protocol-admin-key", "s3cret")
INFER = ("triton-grpc-protocol-infer-key", "k2")
X = np.ones((1, 4), np.float32)
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module", params=["python", "native"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    if request.param == "native":
        native_built()
    repo = standard_repository(tmp_path_factory.mktemp("restricted") / "model_repository")
    add_forecaster(repo)
    srv = ServerProcess(
        repo,
        "--frontend",
        request.param,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        "--grpc-restricted-protocol",
        "model-repository,model-config,statistics:admin-key=s3cret",
        "--grpc-restricted-protocol",
        "inference:infer-key=k2",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.terminate()


@pytest.fixture(scope="module")
def v2(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    channel, s = stub(server.target)
    with channel:
        yield s


def test_restricted_rpcs_need_their_header(v2: pb_grpc.GRPCInferenceServiceStub) -> None:
    index = pb.RepositoryIndexRequest()
    for metadata in ((), (("triton-grpc-protocol-admin-key", "wrong"),), (INFER,)):
        err = call_error(v2.RepositoryIndex, index, metadata=metadata, timeout=5)
        assert err.code() is DENIED
        assert "'triton-grpc-protocol-admin-key'" in err.details()
        assert "s3cret" not in err.details()
    assert v2.RepositoryIndex(index, metadata=(ADMIN,), timeout=5).models
    load = pb.RepositoryModelLoadRequest(model_name="affine")
    assert call_error(v2.RepositoryModelLoad, load, timeout=30).code() is DENIED
    config = pb.ModelConfigRequest(name="affine")
    assert call_error(v2.ModelConfig, config, timeout=5).code() is DENIED
    assert v2.ModelConfig(config, metadata=(ADMIN,), timeout=5).config.name == "affine"
    # Unrestricted groups answer anyone.
    assert v2.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert v2.ModelMetadata(pb.ModelMetadataRequest(name="affine"), timeout=5).name == "affine"


def test_inference_group_covers_v2_and_the_typed_apis(
    server: ServerProcess, v2: pb_grpc.GRPCInferenceServiceStub
) -> None:
    # A request the native fast path would take as it is: it is refused before.
    err = call_error(v2.ModelInfer, request("affine", x=X), timeout=5)
    assert err.code() is DENIED and "'triton-grpc-protocol-infer-key'" in err.details()
    got = outputs(v2.ModelInfer(request("affine", x=X), metadata=(INFER,), timeout=5))
    np.testing.assert_array_equal(got["y"], 2 * X + 1)
    with grpc.insecure_channel(server.target) as ch:
        api = fgrpc.ForecasterStub(ch)
        err = call_error(api.Forecast, fpb.ForecastRequest(model_name="fc"), timeout=5)
        assert err.code() is DENIED
        assert api.ListModels(fpb.ListModelsRequest(), timeout=5).models  # metadata: open


TRITONCLIENT = """
import json, sys
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
c = grpcclient.InferenceServerClient(sys.argv[1])
out = {}
try:
    c.get_model_repository_index()
except InferenceServerException as e:
    out["without"] = e.status()
index = c.get_model_repository_index(headers={"triton-grpc-protocol-admin-key": "s3cret"},
                                     as_json=True)
out["with"] = sorted(m["name"] for m in index["models"])
print(json.dumps(out))
"""


def test_tritonclient_sends_the_header(server: ServerProcess) -> None:
    python = tool("tritonclient")
    out = subprocess.run(
        [str(python), "-c", TRITONCLIENT, server.target], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["without"] == "StatusCode.PERMISSION_DENIED"
    assert "affine" in got["with"]


@pytest.mark.parametrize(
    ("specs", "words"),
    [
        (["model-repository"], "expected <protocol>"),
        (["model-repository:key"], "expected <protocol>"),
        (["nope:k=v"], "unknown protocol 'nope'"),
        (["inference:k=v", "inference,health:j=w"], "'inference' is in two groups"),
        (["inference:a key=v"], "letters, digits"),
    ],
)
def test_malformed_flags_are_refused(specs: list[str], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        restricted.parse(specs)


def test_every_rpc_of_the_v2_service_is_in_a_group() -> None:
    methods = {m for group in restricted.GROUPS.values() for m in group}
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        assert f"/inference.GRPCInferenceService/{method.name}" in methods, method.name
