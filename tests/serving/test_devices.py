"""Execution providers: `--device` and `instance_group { kind }` choose them, and a session that
does not get the one asked for fails the load or warns (`--device-fallback`), never silently
(`serving/models/onnx_model.py`). This machine's onnxruntime has no CUDA provider, so asking
for CUDA shows the policy; on a CUDA build these cases are skipped (bench/gpu.py covers it)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from protos.inference import model_config_pb2 as mc
from serving.models.onnx_model import ModelLoadError, create_session, run_bound
from serving.settings import Device, FallbackPolicy, Settings
from tests.serving.model_factory import affine

needs_cpu_only_build = pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this onnxruntime build has CUDA: the fallback cannot be shown",
)


def _config(kind: int) -> mc.ModelConfig:
    config = mc.ModelConfig(name="m", platform="onnxruntime_onnx", max_batch_size=8)
    config.instance_group.add(count=1, kind=kind)
    return config


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("devices") / "model.onnx"
    affine(path)
    return path


def _settings(device: Device, fallback: FallbackPolicy = FallbackPolicy.FAIL) -> Settings:
    return Settings(model_repository=Path("."), device=device, device_fallback=fallback)


@needs_cpu_only_build
@pytest.mark.parametrize(
    ("kind", "device"),
    [
        (mc.ModelInstanceGroup.KIND_AUTO, Device.CUDA),  # the export default follows --device
        (mc.ModelInstanceGroup.KIND_GPU, Device.CPU),  # the config asks for the GPU itself
    ],
)
def test_cuda_that_is_not_there_fails_the_load_by_default(
    model_file: Path, kind: int, device: Device
) -> None:
    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider is not available") as err:
        create_session(model_file, _config(kind), _settings(device))
    assert "seqserve[serve-gpu]" in str(err.value)  # what to do about it


@needs_cpu_only_build
def test_warn_policy_loads_on_cpu_and_says_so(
    model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.models.onnx_model"):
        session = create_session(
            model_file,
            _config(mc.ModelInstanceGroup.KIND_AUTO),
            _settings(Device.CUDA, FallbackPolicy.WARN),
        )
    assert session.get_providers() == ["CPUExecutionProvider"]
    [record] = caplog.records
    assert (
        "asked for CUDAExecutionProvider, the session got CPUExecutionProvider"
        in record.getMessage()
    )


def test_kind_cpu_pins_a_model_to_the_cpu_whatever_the_device(
    model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.models.onnx_model"):
        session = create_session(
            model_file, _config(mc.ModelInstanceGroup.KIND_CPU), _settings(Device.CUDA)
        )
    assert session.get_providers() == ["CPUExecutionProvider"]
    [record] = caplog.records  # said, since --device asked for something else
    assert (
        "pins instance_group kind KIND_CPU, so it runs on cpu, not on --device cuda"
        in record.getMessage()
    )


def test_run_bound_answers_as_run_does(model_file: Path) -> None:
    session = create_session(
        model_file, _config(mc.ModelInstanceGroup.KIND_CPU), _settings(Device.CPU)
    )
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}
    got = run_bound(session, feeds, ["z", "y"])
    want = session.run(["z", "y"], feeds)
    assert len(got) == 2 and all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
