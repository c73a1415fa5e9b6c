"""The repository writer: numbered versions, refusal to overwrite, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import text_format

from export.errors import ExportError
from export.model_config import Tensor, onnx_model_config
from export.repository import read_config, write_version
from protos.inference import model_config_pb2 as mc


@pytest.fixture
def config() -> mc.ModelConfig:
    return onnx_model_config([Tensor("x", (3,))], [Tensor("y", (3,))], {"task": "test"})


def test_versions_count_up(tmp_path: Path, config: mc.ModelConfig) -> None:
    first = write_version(tmp_path, "m", config, {"model.onnx": b"one"})
    second = write_version(tmp_path, "m", config, {"model.onnx": b"two"})
    assert (first.name, second.name) == ("1", "2")
    assert (second / "model.onnx").read_bytes() == b"two"
    assert read_config(tmp_path / "m").name == "m"
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2", "config.pbtxt"]  # no temp leftovers


def test_existing_version_is_refused_unless_forced(tmp_path: Path, config: mc.ModelConfig) -> None:
    write_version(tmp_path, "m", config, {"model.onnx": b"old"}, version=3)
    with pytest.raises(ExportError, match="exists: pass force"):
        write_version(tmp_path, "m", config, {"model.onnx": b"new"}, version=3)
    assert (tmp_path / "m" / "3" / "model.onnx").read_bytes() == b"old"
    write_version(tmp_path, "m", config, {"model.onnx": b"new"}, version=3, force=True)
    assert (tmp_path / "m" / "3" / "model.onnx").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "m")) == ["3", "config.pbtxt"]
    assert write_version(tmp_path, "m", config, {"model.onnx": b"x"}).name == "4"


def test_files_are_copied_with_sidecars(tmp_path: Path, config: mc.ModelConfig) -> None:
    src = tmp_path / "src.onnx"
    src.write_bytes(b"graph")
    out = write_version(
        tmp_path / "repo",
        "t",
        config,
        {"encoder.onnx": src, "decoder.onnx": b"d", "tok/sp.model": b"s"},
    )
    assert (out / "encoder.onnx").read_bytes() == b"graph"
    assert (out / "tok" / "sp.model").read_bytes() == b"s"


def test_a_failed_write_leaves_nothing(tmp_path: Path, config: mc.ModelConfig) -> None:
    with pytest.raises(FileNotFoundError):
        write_version(tmp_path, "m", config, {"a.onnx": b"a", "b.onnx": tmp_path / "missing"})
    assert os.listdir(tmp_path / "m") == []  # no version folder, no temp folder, no config


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b", "a b", "-x"])
def test_bad_names_are_refused(tmp_path: Path, config: mc.ModelConfig, name: str) -> None:
    with pytest.raises(ExportError, match="invalid model name"):
        write_version(tmp_path, name, config, {"model.onnx": b"x"})


def test_bad_file_names_are_refused(tmp_path: Path, config: mc.ModelConfig) -> None:
    with pytest.raises(ExportError, match="relative path"):
        write_version(tmp_path, "m", config, {"../escape.onnx": b"x"})


def test_config_is_triton_text_format(tmp_path: Path, config: mc.ModelConfig) -> None:
    write_version(tmp_path, "m", config, {"model.onnx": b"x"})
    text = (tmp_path / "m" / "config.pbtxt").read_text()
    parsed = text_format.Parse(text, mc.ModelConfig())
    assert parsed.platform == "onnxruntime_onnx" and parsed.backend == "onnxruntime"
    assert parsed.max_batch_size == 64
    assert parsed.HasField("dynamic_batching")  # eager: delay 0, Triton's default
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(g.count, g.kind) for g in parsed.instance_group] == [
        (1, mc.ModelInstanceGroup.KIND_AUTO)
    ]
    assert parsed.version_policy.latest.num_versions == 1
    assert parsed.parameters["seqserve_schema"].string_value == "1"
    assert oct((tmp_path / "m" / "config.pbtxt").stat().st_mode & 0o777) == "0o644"


def test_read_config_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text("max_batch_size: nope")
    with pytest.raises(ExportError, match=r"config\.pbtxt"):
        read_config(tmp_path)
