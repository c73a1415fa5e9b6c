"""Export failures write nothing; int8 exports record their accuracy; the CLI dispatches on the
checkpoint's kind and refuses to overwrite a version."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import forecaster
from export.errors import ExportError
from export.forecaster import ExportOptions, export_forecaster, parameters_of
from export.repository import read_config
from export.verify import check_config_signature, check_dims
from seqserve.cli import main
from tests.export.conftest import Exported

GRU = "segrnn-gru"


def test_int8_export_is_recorded(exported: dict[str, Exported], tmp_path: Path) -> None:
    e = exported[GRU]
    out = export_forecaster(e.checkpoint, tmp_path, "q", ExportOptions(quantize="int8"))
    q = parameters_of(read_config(tmp_path / "q"))["quantization"]
    assert q["type"] == "int8" and q["weight_type"] == "QInt8"
    assert sum(q["quantized_nodes"].values()) > 0
    assert q["val_mse_int8"] > 0 and q["val_mse_fp32"] > 0
    assert q["val_mse_increase"] <= q["max_val_mse_increase"] == 0.05
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}


def test_fp16_export_keeps_the_interface_and_the_scaling_in_fp32(
    exported: dict[str, Exported], tmp_path: Path
) -> None:
    e = exported[GRU]
    out = export_forecaster(e.checkpoint, tmp_path, "h", ExportOptions(quantize="fp16"))
    q = parameters_of(read_config(tmp_path / "h"))["quantization"]
    assert q["type"] == "fp16" and q["intended_device"] == "gpu"
    assert q["fp16_nodes"] > 0 and q["fp32_nodes"] > 0
    assert q["val_mse_increase"] <= q["max_val_mse_increase"]
    model = onnx.load(str(out / "model.onnx"))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert {t.type.tensor_type.elem_type for t in [*model.graph.input, *model.graph.output]} == {
        f32
    }
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["mean"] == types["std"] == f32  # raw-unit constants are not rounded to fp16
    # raw units never pass through fp16: no fp32 -> fp16 -> fp32 round trip (the converter
    # made one around every kept node, so values over 65504 became inf), and the input feeds
    # the scaling directly
    cast_to = {n.output[0]: next(a.i for a in n.attribute if a.name == "to")
               for n in model.graph.node if n.op_type == "Cast"}  # fmt: skip
    for node in model.graph.node:
        if node.op_type == "Cast" and cast_to[node.output[0]] == f32:
            assert cast_to.get(node.input[0]) != f16, node.name
    assert [n.op_type for n in model.graph.node if "past" in n.input] == ["Sub"]
    assert len({o for n in model.graph.node for o in n.output}) == sum(
        len(n.output) for n in model.graph.node
    )  # single static assignment
    assert f16 in types.values()
    # onnxruntime's CPU provider runs it too (casting around the nodes it lacks in fp16); the
    # forecast stays close to the fp32 model's, relative to the target's spread.
    rng = np.random.default_rng(1)
    feeds = {
        i.name: rng.standard_normal([3, *i.shape[1:]]).astype(np.float32) * 5
        for i in ort.InferenceSession(str(out / "model.onnx")).get_inputs()
    }
    full = ort.InferenceSession(str(e.model_dir / "1" / "model.onnx")).run(["forecast"], feeds)[0]
    half = ort.InferenceSession(str(out / "model.onnx")).run(["forecast"], feeds)[0]
    assert half.dtype == np.float32 and half.shape == full.shape
    assert np.abs(half - full).max() <= 0.05 * (full.std() + 1e-6) + 1e-3


def test_int8_over_the_limit_fails_and_writes_nothing(
    exported: dict[str, Exported], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="int8 raises the validation MSE"):
        export_forecaster(
            exported[GRU].checkpoint,
            tmp_path,
            "q",
            ExportOptions(quantize="int8", max_mse_increase=-1.0),
        )
    assert not (tmp_path / "q").exists() or os.listdir(tmp_path / "q") == []


def test_parity_failure_fails_and_writes_nothing(
    exported: dict[str, Exported], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = forecaster.torch_reference

    def drifting(graph: object, names: list[str]) -> object:
        run = real(graph, names)
        return lambda inputs: {k: v + 0.5 for k, v in run(inputs).items()}

    monkeypatch.setattr(forecaster, "torch_reference", drifting)
    with pytest.raises(ExportError, match="onnxruntime differs from PyTorch"):
        export_forecaster(exported[GRU].checkpoint, tmp_path, "p")
    assert not (tmp_path / "p").exists() or os.listdir(tmp_path / "p") == []


def test_check_dims_catches_a_frozen_or_missing_dimension(exported: dict[str, Exported]) -> None:
    model = onnx.load(str(exported[GRU].model_dir / "1" / "model.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8  # batch frozen to 8
    with pytest.raises(ExportError, match="tensor 'past' has dims"):
        check_dims(model, {"past": [None, 48, 3]})


def test_signature_mismatch_is_named(exported: dict[str, Exported]) -> None:
    e = exported[GRU]
    config = read_config(e.model_dir)
    config.output[0].dims[0] = 99
    with pytest.raises(ExportError, match="output 'forecast': config dims"):
        check_config_signature(config, onnx.load(str(e.model_dir / "1" / "model.onnx")))


def test_cli_exports_and_refuses_to_overwrite(
    exported: dict[str, Exported], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt, repo = str(exported["rnn-lstm"].checkpoint), str(tmp_path)
    args = ["export", "--checkpoint", ckpt, "--repository", repo, "--name", "m"]
    assert main([*args, "--version", "2"]) == 0
    assert (tmp_path / "m" / "2" / "model.onnx").is_file()
    assert main([*args, "--version", "2"]) == 2
    assert "exists: pass force" in capsys.readouterr().err
    assert main([*args, "--version", "2", "--force"]) == 0
    assert main(args) == 0 and (tmp_path / "m" / "3").is_dir()


def test_cli_names_an_unknown_kind(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    torch.save({"kind": "mystery"}, tmp_path / "checkpoint.pt")
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(tmp_path),
                "--name",
                "m",
                "--repository",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "no exporter for checkpoint kind 'mystery'" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--name", "m"]) == 2
