"""The main job end to end: build the default repository (tiny preset, the same code path as
`make serve`), serve it, and get an answer from every model in it."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from seqserve.defaults import BUILDERS
from serving import tensors
from tests.conftest import ServerProcess


def test_repository_holds_every_default_model(tiny_repository: Path) -> None:
    models = sorted(p.parent.name for p in tiny_repository.glob("*/config.pbtxt"))
    assert models == sorted(BUILDERS) == ["forecaster_gru", "forecaster_lstm", "translator"]


def test_every_model_answers(tiny_server: ServerProcess) -> None:
    health = subprocess.run(
        [sys.executable, "-m", "seqserve", "health", "-u", tiny_server.target],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert health.returncode == 0, health.stdout
    with grpc.insecure_channel(tiny_server.target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        for name in BUILDERS:
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10)
            request = pb.ModelInferRequest(model_name=name)
            for t in meta.inputs:
                shape = [1 if d == -1 else d for d in t.shape]
                if t.datatype == "BYTES":
                    array = np.array([[b"dreihundertzweiundvierzig"]], dtype=object)
                else:
                    array = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
                request.inputs.add(name=t.name, datatype=t.datatype, shape=array.shape)
                request.raw_input_contents.append(tensors.to_raw(array, t.datatype))
            reply = stub.ModelInfer(request, timeout=30)
            assert [o.name for o in reply.outputs] == [o.name for o in meta.outputs], name
            for out, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
                value = tensors.from_raw(raw, out.datatype, list(out.shape), out.name)
                if out.datatype == "FP32":
                    assert np.isfinite(value).all(), (name, out.name)
    with urllib.request.urlopen(tiny_server.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    for name in BUILDERS:
        assert f'nv_inference_request_success{{model="{name}",version="1"}}' in text


def test_model_info_reports_the_quantiles_calibration(tiny_server: ServerProcess) -> None:
    """GetModelInfo carries what training measured of the calibrated quantiles: coverage per
    level, the interval's width and the pinball loss, on validation and on test."""
    from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
    from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as fgrpc

    with grpc.insecure_channel(tiny_server.target) as ch:
        api = fgrpc.ForecasterStub(ch)
        request = fpb.GetModelInfoRequest(model_name="forecaster_gru")
        info = api.GetModelInfo(request, timeout=10).model
    assert list(info.quantile_levels) == [0.1, 0.5, 0.9]
    metrics = dict(info.metrics)  # a proto map answers 0.0 for a missing key; a dict does not
    for part in ("val", "test"):
        for tau in ("0.1", "0.5", "0.9"):
            assert 0 <= metrics[f"{part}_coverage_{tau}"] <= 1
        assert metrics[f"{part}_interval_width_0.1_0.9"] > 0
        assert metrics[f"{part}_pinball"] > 0
