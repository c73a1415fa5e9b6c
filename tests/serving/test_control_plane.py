"""The repository control plane against a hostile caller: a Load override can name no file
outside its version folder, nor tell whether one exists, nor ask for unbounded instances or
threads; and a Load that fails says so, even while the previous version goes on serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.serving.model_factory import AFFINE_CONFIG, add_model, affine
from tests.serving.v2 import call_error, outputs, request, stub

X = np.ones((1, 4), np.float32)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
CONFIG = {
    "platform": "onnxruntime_onnx",
    "max_batch_size": 8,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
    "output": [
        {"name": "y", "data_type": "TYPE_FP32", "dims": [4]},
        {"name": "z", "data_type": "TYPE_FP32", "dims": [1]},
    ],
}


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid model file outside the repository: what an attacker would have served."""
    path = tmp_path_factory.mktemp("outside") / "model.onnx"
    affine(path)
    return path


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, outside: Path
) -> Iterator[tuple[ServerProcess, pb_grpc.GRPCInferenceServiceStub]]:
    repo = tmp_path_factory.mktemp("control") / "model_repository"
    model = add_model(repo, "a", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    (model / "1" / "link.onnx").symlink_to(outside)
    srv = ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "a")
    try:
        srv.wait_ready()
        channel, s = stub(srv.target)
        with channel:
            yield srv, s
    finally:
        srv.terminate()


def load(s: pb_grpc.GRPCInferenceServiceStub, **override: object) -> grpc.RpcError:
    msg = pb.RepositoryModelLoadRequest(model_name="a")
    msg.parameters["config"].string_param = json.dumps({**CONFIG, **override})
    return call_error(s.RepositoryModelLoad, msg, timeout=30)


def still_serving(s: pb_grpc.GRPCInferenceServiceStub) -> None:
    got = outputs(s.ModelInfer(request("a", x=X), timeout=10))
    np.testing.assert_array_equal(got["y"], 2 * X + 1)
    assert s.ModelReady(pb.ModelReadyRequest(name="a"), timeout=5).ready


def test_model_file_outside_the_version_folder(server, outside: Path) -> None:  # noqa: ANN001
    _, s = server
    for name in (str(outside), f"../../../{outside.parent.name}/model.onnx", "..", "a\0b"):
        err = load(s, default_model_filename=name)
        assert err.code() is INVALID, err.details()
        assert "default_model_filename" in err.details()
        assert "must be a file name in the version folder" in err.details()
        assert "failed to load model 'a'" in err.details()
        still_serving(s)


def test_symbolic_link_out_of_the_version_folder(server) -> None:  # noqa: ANN001
    _, s = server
    err = load(s, default_model_filename="link.onnx")
    assert err.code() is INVALID
    assert "resolves outside the version folder" in err.details()
    still_serving(s)


def test_errors_do_not_tell_whether_a_path_exists(server, outside: Path) -> None:  # noqa: ANN001
    _, s = server
    there = load(s, default_model_filename=str(outside)).details()
    absent = load(s, default_model_filename=str(outside.parent / "absent.onnx")).details()
    assert there.replace(str(outside), "P") == absent.replace(
        str(outside.parent / "absent.onnx"), "P"
    )


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"instance_group": [{"count": 17}]}, "17 instances, at most 16"),
        ({"instance_group": [{"count": 9}, {"count": 9}]}, "18 instances, at most 16"),
        ({"instance_group": [{"count": 1_000_000}]}, "at most 16"),
        (
            {"parameters": {"intra_op_thread_count": {"string_value": "100000"}}},
            "intra_op_thread_count",
        ),
        ({"max_batch_size": -1}, "max_batch_size"),
    ],
)
def test_unbounded_overrides(server, override: dict, words: str) -> None:  # noqa: ANN001
    _, s = server
    err = load(s, **override)
    assert err.code() is INVALID
    assert words in err.details()
    still_serving(s)


def test_failed_reload_is_an_error(server) -> None:  # noqa: ANN001
    """The graph has no input 'w': the new load fails, version 1 keeps serving, and the call
    says both (it used to answer OK)."""
    _, s = server
    err = load(s, input=[{"name": "w", "data_type": "TYPE_FP32", "dims": [4]}])
    assert err.code() is INVALID
    assert "failed to load model 'a': version 1: input 'w' is not in the graph" in err.details()
    assert "still serving" in err.details()
    still_serving(s)
    # A good override still loads and answers OK.
    s.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="a"), timeout=30)
    still_serving(s)
