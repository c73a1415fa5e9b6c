"""Conformance of every exported forecaster kind: graph dims, config <-> graph signature,
onnxruntime-vs-PyTorch parity at batch 1 and N, raw units in and out, the pinned parameters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.forecaster import export_forecaster, load_forecaster, parameters_of
from export.repository import read_config
from export.verify import graph_dims
from protos.inference import model_config_pb2 as mc
from tests.export.conftest import VARIANTS, Exported
from training import calibration, checkpoint

NAMES = list(VARIANTS)


def graph(e: Exported) -> onnx.ModelProto:
    return onnx.load(str(e.model_dir / "1" / "model.onnx"))


@pytest.mark.parametrize("name", NAMES)
def test_onnx_dims_batch_symbolic_others_fixed(exported: dict[str, Exported], name: str) -> None:
    e = exported[name]
    config = load_forecaster(checkpoint.load(e.checkpoint))[0]
    L, H, Q = config.input_len, config.horizon, len(config.quantiles)  # noqa: N806
    dims = graph_dims(graph(e))
    for tensor, shape in dims.items():
        assert isinstance(shape[0], str), f"{tensor}: batch dim must be symbolic, is {shape[0]}"
        assert all(isinstance(d, int) for d in shape[1:]), f"{tensor}: {shape}"
    assert dims["past"][1:] == [L, config.n_past]
    assert dims["forecast"][1:] == [H, config.n_targets]
    assert ("future" in dims) == bool(config.n_future)
    if config.n_future:
        assert dims["future"][1:] == [H, config.n_future]
    assert ("quantiles" in dims) == bool(Q)
    if Q:
        assert dims["quantiles"][1:] == [H, config.n_targets, Q]


@pytest.mark.parametrize("name", NAMES)
def test_config_matches_the_graph(exported: dict[str, Exported], name: str) -> None:
    e = exported[name]
    config = read_config(e.model_dir)
    assert config.name == name
    dims = graph_dims(graph(e))
    model = graph(e)
    declared = {t.name: list(t.dims) for t in [*config.input, *config.output]}
    assert [t.name for t in config.input] == [i.name for i in model.graph.input]
    assert [t.name for t in config.output] == [o.name for o in model.graph.output]
    assert declared == {k: v[1:] for k, v in dims.items()}  # config dims exclude batch
    assert {t.data_type for t in [*config.input, *config.output]} == {mc.TYPE_FP32}


@pytest.mark.parametrize("name", NAMES)
def test_parity_with_pytorch_at_batch_1_and_n(exported: dict[str, Exported], name: str) -> None:
    e = exported[name]
    model_config, wrapped = load_forecaster(checkpoint.load(e.checkpoint))
    sess = ort.InferenceSession(
        str(e.model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    data = checkpoint.load(e.checkpoint)["data"]
    rng = np.random.default_rng(123)
    for batch in (1, 13):
        past = np.array(data["mean"]) + np.array(data["std"]) * rng.standard_normal(
            (batch, model_config.input_len, model_config.n_past)
        )
        feeds = {"past": past.astype(np.float32)}
        if model_config.n_future:
            feeds["future"] = rng.uniform(
                -0.5, 0.5, (batch, model_config.horizon, model_config.n_future)
            ).astype(np.float32)
        got = sess.run(None, feeds)
        with torch.no_grad():
            want = wrapped(*(torch.from_numpy(v) for v in feeds.values()))
        want = want if isinstance(want, tuple) else (want,)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape) and g.shape[0] == batch
            np.testing.assert_allclose(g, w.numpy(), atol=1e-3, rtol=1e-4)
        if len(got) == 2:
            assert np.all(np.diff(got[1], axis=-1) >= 0), "quantiles must not cross"


QUANTILE_NAMES = [n for n in NAMES if VARIANTS[n][0].quantiles]


@pytest.mark.parametrize("name", QUANTILE_NAMES)
def test_the_graph_carries_the_conformal_calibration(
    exported: dict[str, Exported], name: str
) -> None:
    """The served quantiles are the network's, corrected by the offsets training fitted on
    validation and sorted, as training/calibration.py does: every client gets them."""
    e = exported[name]
    payload = checkpoint.load(e.checkpoint)
    model_config, graph = load_forecaster(payload)
    correction = payload["calibration"].numpy()  # [H, F_out, Q]
    assert correction.shape == (
        model_config.horizon,
        model_config.n_targets,
        len(model_config.quantiles),
    )
    assert np.abs(correction).max() > 0
    sample, data = payload["data"]["validation_sample"], payload["data"]
    feeds = {"past": sample["past"].numpy()}
    if model_config.n_future:
        feeds["future"] = sample["future"].numpy()
    sess = ort.InferenceSession(
        str(e.model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    served = sess.run(["quantiles"], feeds)[0]  # [n, H, F_out, Q] raw units
    mean, std = np.array(data["mean"]), np.array(data["std"])
    t = list(model_config.target_index)
    with torch.no_grad():
        scaled = torch.from_numpy(((feeds["past"] - mean) / std).astype(np.float32))
        future = torch.from_numpy(feeds["future"]) if model_config.n_future else None
        raw = graph.net(scaled, future)[1].numpy()  # [n, H, F_out, Q] standardised
    want = calibration.apply(raw, correction) * std[t][:, None] + mean[t][:, None]
    np.testing.assert_allclose(served, want, atol=1e-3, rtol=1e-4)
    assert parameters_of(read_config(e.model_dir))["quantiles_calibrated"] == "conformal"


def test_a_checkpoint_without_calibration_still_exports(
    exported: dict[str, Exported], tmp_path: Path
) -> None:
    """Checkpoints from before calibration export as they did: the heads' quantiles as is."""
    e = exported[QUANTILE_NAMES[0]]
    payload = checkpoint.load(e.checkpoint)
    del payload["calibration"]
    checkpoint.save(tmp_path / "old", payload)
    out = export_forecaster(tmp_path / "old", tmp_path / "repo", "old")
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "TopK" not in ops
    assert parameters_of(read_config(tmp_path / "repo" / "old"))["quantiles_calibrated"] == "no"


@pytest.mark.parametrize("name", NAMES)
def test_raw_units_in_and_out(exported: dict[str, Exported], name: str) -> None:
    """On the validation sample (raw units), the graph reproduces the training-time val MSE."""
    e = exported[name]
    payload = checkpoint.load(e.checkpoint)
    model_config = load_forecaster(payload)[0]
    sample, data = payload["data"]["validation_sample"], payload["data"]
    feeds = {"past": sample["past"].numpy()}
    if model_config.n_future:
        feeds["future"] = sample["future"].numpy()
    sess = ort.InferenceSession(
        str(e.model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    forecast = sess.run(["forecast"], feeds)[0]
    std = np.array(data["std"])[list(model_config.target_index)]
    mse = np.mean(((forecast - sample["target"].numpy()) / std) ** 2)
    assert mse == pytest.approx(payload["metrics"]["val_mse"], rel=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_follow_schema_1(exported: dict[str, Exported], name: str) -> None:
    e = exported[name]
    config = read_config(e.model_dir)
    payload = checkpoint.load(e.checkpoint)
    model_config = load_forecaster(payload)[0]
    raw = {k: v.string_value for k, v in config.parameters.items()}
    assert all(isinstance(v, str) for v in raw.values())
    p = parameters_of(config)
    assert raw["seqserve_schema"] == "1" and raw["task"] == "forecaster"
    assert raw["architecture"] == name
    assert raw["input_window"] == str(model_config.input_len)
    assert raw["horizon"] == str(model_config.horizon)
    assert p["past_features"] == payload["data"]["past_features"]
    assert p["target_names"] == payload["data"]["target_names"]
    assert p["future_features"] == payload["data"]["future_features"]
    assert p["quantiles"] == list(model_config.quantiles)
    assert raw["frequency_seconds"] == "3600" and raw["frequency"] == "h"
    assert p["metrics"]["test_mse"] == payload["metrics"]["test_mse"]
    assert raw["exporter"].startswith("torch.onnx.export(dynamo=False)")
    assert int(raw["opset"]) >= 17 and float(raw["parity_atol"]) > 0
    assert "quantization" not in raw
    json.loads(raw["metrics"])  # records are JSON
