"""Export a forecaster checkpoint: ONNX graph, verification, config.pbtxt, repository write.

The graph (see docs/model-repository.md):
    inputs   past [B, L, F_in] FP32 raw units, feature order `past_features`
             future [B, H, F_fut] FP32 calendar features (only when F_fut > 0)
    outputs  forecast [B, H, F_out] FP32 raw units
             quantiles [B, H, F_out, Q] FP32 raw units, non-decreasing in Q (only when Q > 0),
                       with the conformal calibration training fitted baked in
Batch is the only dynamic dimension. Nothing is written unless every check passes.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.errors import ExportError
from export.model_config import Tensor, onnx_model_config
from export.onnx_export import export_onnx, exporter_name, set_output_dims
from export.quantize import FP16_METHOD, METHOD, WEIGHT_TYPE, convert_fp16, quantize_int8
from export.repository import write_version
from export.verify import check_config_signature, check_dims, check_model, check_parity, session
from export.wrappers import ForecasterGraph
from protos.inference.model_config_pb2 import ModelConfig
from training import checkpoint
from training.config import ForecasterConfig
from training.models.forecasters import architecture_name, build_forecaster

PARITY_BATCHES = (1, 7, 64)  # 1, an odd N, and max_batch_size
PARITY_RTOL = 1e-4  # relative to the target's standard deviation, in raw units


@dataclass(frozen=True)
class ExportOptions:
    version: int | None = None
    force: bool = False
    quantize: str | None = None  # None | "int8" (CPU) | "fp16" (GPU serving)
    opset: int | None = None
    max_mse_increase: float = 0.05  # relative increase of the validation MSE, int8 or fp16


def load_forecaster(payload: dict[str, Any]) -> tuple[ForecasterConfig, ForecasterGraph]:
    if payload["kind"] != "forecaster":
        raise ExportError(f"checkpoint kind is {payload['kind']!r}, not 'forecaster'")
    config = checkpoint.rebuild(ForecasterConfig, payload["model_args"])
    net = build_forecaster(config)
    net.load_state_dict(payload["state_dict"])
    data = payload["data"]
    calibration = payload.get("calibration")  # absent from checkpoints before it
    graph = ForecasterGraph(net, data["mean"], data["std"], config.target_index, calibration)
    graph = graph.eval()
    return config, graph


def tensors(config: ForecasterConfig) -> tuple[list[Tensor], list[Tensor]]:
    L, H, Q = config.input_len, config.horizon, len(config.quantiles)  # noqa: N806
    inputs = [Tensor("past", (L, config.n_past))]
    if config.n_future:
        inputs.append(Tensor("future", (H, config.n_future)))
    outputs = [Tensor("forecast", (H, config.n_targets))]
    if Q:
        outputs.append(Tensor("quantiles", (H, config.n_targets, Q)))
    return inputs, outputs


def random_inputs(
    config: ForecasterConfig, data: dict[str, Any], batch: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Fresh raw-unit inputs: standard normal in scaled space, mapped back to raw units."""
    mean, std = np.array(data["mean"]), np.array(data["std"])
    past = mean + std * rng.standard_normal((batch, config.input_len, config.n_past))
    inputs = {"past": past.astype(np.float32)}  # [B, L, F_in]
    if config.n_future:
        future = rng.uniform(-0.5, 0.5, (batch, config.horizon, config.n_future))
        inputs["future"] = future.astype(np.float32)  # [B, H, F_fut]
    return inputs


def torch_reference(
    graph: ForecasterGraph, output_names: list[str]
) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    @torch.no_grad()
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = graph(*(torch.from_numpy(v) for v in inputs.values()))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(output_names, out, strict=True)}

    return run


def validation_mse(path: Path, config: ForecasterConfig, data: dict[str, Any]) -> float:
    """MSE of the graph at `path` on the checkpoint's validation sample, on standardised values
    (the benchmark's scale), so fp32 and int8 graphs can be compared."""
    sample = data["validation_sample"]
    feeds = {"past": sample["past"].numpy()}
    if config.n_future:
        feeds["future"] = sample["future"].numpy()
    forecast = session(path).run(["forecast"], feeds)[0]  # [n, H, F_out]
    t = list(config.target_index)
    std = np.array(data["std"])[t]
    err = (forecast.astype(np.float64) - sample["target"].numpy()) / std
    return float(np.mean(err**2))


def build_config(
    config: ForecasterConfig,
    payload: dict[str, Any],
    opset: int,
    atol: float,
    quantization: dict[str, Any] | None,
) -> ModelConfig:
    data = payload["data"]
    parameters: dict[str, object] = {
        "task": "forecaster",
        "architecture": architecture_name(config),
        "input_window": str(config.input_len),
        "horizon": str(config.horizon),
        "past_features": data["past_features"],
        "target_names": data["target_names"],
        "future_features": data["future_features"],
        # a pandas offset alias, and for business days the holidays its data skipped; the
        # fixed step in seconds too (0 when steps differ), as repositories before it had
        "frequency": data.get("frequency", ""),
        "holidays": list(data.get("holidays", [])),
        "frequency_seconds": str(data["frequency_seconds"]),
        "quantiles": list(config.quantiles),
        "quantiles_calibrated": "conformal" if payload.get("calibration") is not None else "no",
        # global: the train rows' statistics are baked in; window: each window scales itself
        "scaling": config.scaling or "global",
        "series": list(data.get("series", [])),  # the ids a long-format file trained it on
        "metrics": payload.get("metrics", {}),
        "exporter": exporter_name(dynamo=False),
        "opset": str(opset),
        "parity_atol": f"{atol:.3g}",
    }
    if quantization is not None:
        parameters["quantization"] = quantization
    inputs, outputs = tensors(config)
    return onnx_model_config(inputs, outputs, parameters)


def export_forecaster(
    checkpoint_dir: Path, repository: Path, name: str, options: ExportOptions = ExportOptions()
) -> Path:
    """Export, verify and write one version; returns the version folder."""
    payload = checkpoint.load(checkpoint_dir)
    config, graph = load_forecaster(payload)
    data = payload["data"]
    inputs, outputs = tensors(config)
    input_names, output_names = [t.name for t in inputs], [t.name for t in outputs]
    rng = np.random.default_rng(0)
    example = random_inputs(config, data, 2, rng)
    target_std = np.array(data["std"])[list(config.target_index)]
    atol = PARITY_RTOL * float(max(1.0, target_std.max()))

    with tempfile.TemporaryDirectory(prefix="seqserve-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        opset = export_onnx(
            graph,
            tuple(torch.from_numpy(v) for v in example.values()),
            path,
            input_names,
            output_names,
            options.opset,
        )
        dims = {t.name: [None, *t.dims] for t in [*inputs, *outputs]}
        set_output_dims(path, dims)
        check_dims(check_model(path), dims)
        sets = [random_inputs(config, data, b, rng) for b in PARITY_BATCHES]
        check_parity(torch_reference(graph, output_names), session(path), sets, atol)

        quantization = None
        if options.quantize == "int8":
            q_path = Path(tmp) / "model.int8.onnx"
            record: dict[str, Any] = {
                "type": "int8",
                "method": METHOD,
                "weight_type": WEIGHT_TYPE,
                "quantized_nodes": quantize_int8(path, q_path),
            }
        elif options.quantize == "fp16":
            q_path = Path(tmp) / "model.fp16.onnx"
            # The network in fp16; the scaling around it stays FP32: the standardisation
            # (outside /net/) and, for a window-scaled network, the window scaling (raw units
            # of 1e5 would overflow fp16) around its inner network (/net/net/).
            inner = "/net/net/" if config.scaling == "window" else "/net/"
            record = {
                "type": "fp16",
                "method": FP16_METHOD,
                "intended_device": "gpu",
                **convert_fp16(path, q_path, lambda n: not n.startswith(inner)),
            }
        elif options.quantize is not None:
            raise ExportError(f"unknown quantisation {options.quantize!r} (known: int8, fp16)")
        if options.quantize is not None:
            check_dims(check_model(q_path), dims)
            full, reduced = validation_mse(path, config, data), validation_mse(q_path, config, data)
            increase = (reduced - full) / full if full > 0 else 0.0
            if increase > options.max_mse_increase:
                raise ExportError(
                    f"{options.quantize} raises the validation MSE from {full:.4f} "
                    f"to {reduced:.4f} (+{increase:.1%}, limit "
                    f"{options.max_mse_increase:.1%}); nothing was written. "
                    "Raise --max-mse-increase to accept it"
                )
            quantization = {
                **record,
                "val_mse_fp32": round(full, 6),
                f"val_mse_{options.quantize}": round(reduced, 6),
                "val_mse_increase": round(increase, 6),
                "max_val_mse_increase": options.max_mse_increase,
                "val_windows": int(data["validation_sample"]["past"].shape[0]),
            }
            path = q_path

        model_config = build_config(config, payload, opset, atol, quantization)
        check_config_signature(model_config, check_model(path))
        return write_version(
            repository, name, model_config, {"model.onnx": path}, options.version, options.force
        )


def parameters_of(config: ModelConfig) -> dict[str, Any]:
    """config.pbtxt parameters, JSON-decoded where they are JSON (for tests and tools)."""
    out: dict[str, Any] = {}
    for key, value in config.parameters.items():
        try:
            out[key] = json.loads(value.string_value)
        except json.JSONDecodeError:
            out[key] = value.string_value
    return out
