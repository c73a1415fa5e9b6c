"""The weights the native decoder step reads (`core/native/src`): `DecoderStep`'s
buffers under flat names, written beside decoder.onnx as `decoder_step.npz`, and the
settings that are not weights (`native_settings`).

Names: `embed` [V, D] (already scaled by sqrt(D) when the model scales), `positions`
[N, D], `layers.{i}.norm{j}.weight|bias` [D] (the norm of sublayer j: self-attention,
cross-attention, feed-forward), `layers.{i}.w_{name}` [in, out] and `b_{name}` [out] for
qkv, self_out, cross_q, cross_out, ff_1, ff_2, `norm.weight|bias` [D] when the stack ends
with a norm (pre-norm), `w_out` [D, V], `b_out` [V] (Marian's final_logits_bias included).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.translation.native_step import FILE
from export.decoder_step import DecoderStep

MATRICES = ("qkv", "self_out", "cross_q", "cross_out", "ff_1", "ff_2")
ACTIVATIONS = {nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "swish"}


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().contiguous().numpy()


def native_weights(step: DecoderStep) -> dict[str, np.ndarray]:
    """`step`'s weights under the native step's names."""
    embed = step.embed
    weights = {
        "embed": _array(embed.lut.weight * embed.scale),  # [V, D]
        "positions": _array(step.position.pe),  # [N, D]
        "w_out": _array(step.w_out),  # [D, V]
        "b_out": _array(step.b_out),  # [V]
    }
    for i, layer in enumerate(step.layers):
        for j, sublayer in enumerate(layer.sublayer):
            weights[f"layers.{i}.norm{j}.weight"] = _array(sublayer.norm.weight)
            weights[f"layers.{i}.norm{j}.bias"] = _array(sublayer.norm.bias)
        for name in MATRICES:
            weights[f"layers.{i}.w_{name}"] = _array(getattr(layer, f"w_{name}"))
            weights[f"layers.{i}.b_{name}"] = _array(getattr(layer, f"b_{name}"))
    if isinstance(step.norm, nn.LayerNorm):
        weights["norm.weight"], weights["norm.bias"] = (
            _array(step.norm.weight),
            _array(step.norm.bias),
        )
    return weights


def native_settings(step: DecoderStep) -> dict[str, object]:
    """What the native step needs besides the weights: layers, heads, pre- or post-norm, the
    feed-forward activation and the norms' epsilon."""
    first = step.layers[0]
    norm = first.sublayer[0].norm
    return {
        "num_layers": len(step.layers),
        "num_heads": first.heads,
        "norm_first": bool(first.sublayer[0].norm_first),
        "activation": ACTIVATIONS[type(first.act)],
        "eps": float(norm.eps),
    }


def write_native_weights(step: DecoderStep, folder: Path) -> Path:
    """decoder_step.npz in `folder`: the weights, and the settings as JSON under `settings`
    (uncompressed: it loads as fast as it reads)."""
    path = folder / FILE
    np.savez(path, settings=np.array(json.dumps(native_settings(step))), **native_weights(step))
    return path
