"""The weights the native translator reads (`core/native/src`): the encoder's, every decoder
layer's source key/value projection, and the decoder step's (`DecoderStep`'s buffers), under
flat names, written into the version folder as `native.npz` with the settings that are not
weights.

Names (D model width, V vocabulary, L decoder layers):
- `positions` [N, D]: the sinusoidal table both sides add;
- encoder: `encoder.embed` [V, D] (scaled by sqrt(D) when the model scales),
  `encoder.layers.{i}.norm{j}.weight|bias` [D] (j: self-attention, feed-forward),
  `encoder.layers.{i}.w_{name}` [in, out] and `b_{name}` [out] for qkv, self_out, ff_1, ff_2,
  and `encoder.norm.weight|bias` when the stack ends with a norm (pre-norm);
- `cross.w_kv` [D, 2 L D], `cross.b_kv`: decoder layer l's source keys in columns
  2lD..(2l+1)D, its values in the next D;
- decoder step: `embed` [V, D], `layers.{i}.norm{j}.weight|bias` (j: self-attention,
  cross-attention, feed-forward), `layers.{i}.w_{name}`/`b_{name}` for qkv, self_out, cross_q,
  cross_out, ff_1, ff_2, `norm.weight|bias` (pre-norm), `w_out` [D, V], `b_out` [V] (Marian's
  final_logits_bias included).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.translation.native_model import FILE
from export.decoder_step import DecoderStep
from training.models.transformer import EncoderDecoder

DECODER_MATRICES = ("qkv", "self_out", "cross_q", "cross_out", "ff_1", "ff_2")
ACTIVATIONS = {nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "swish"}


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().contiguous().numpy()


def _linear(linears: list[nn.Linear]) -> tuple[np.ndarray, np.ndarray]:
    """nn.Linear layers side by side as the right operand of x @ w: ([in, sum out], [sum out])."""
    w = torch.cat([linear.weight.t() for linear in linears], dim=1)
    return _array(w), _array(torch.cat([linear.bias for linear in linears]))


def _norms(prefix: str, sublayers: nn.ModuleList) -> dict[str, np.ndarray]:
    out = {}
    for j, sublayer in enumerate(sublayers):
        out[f"{prefix}norm{j}.weight"] = _array(sublayer.norm.weight)
        out[f"{prefix}norm{j}.bias"] = _array(sublayer.norm.bias)
    return out


def native_weights(model: EncoderDecoder) -> dict[str, np.ndarray]:
    """`model`'s weights under the native translator's names."""
    step = DecoderStep(model).eval()
    weights = {
        "positions": _array(model.position.pe),  # [N, D]
        "encoder.embed": _array(model.src_embed.lut.weight * model.src_embed.scale),  # [V, D]
        "embed": _array(step.embed.lut.weight * step.embed.scale),  # [V, D]
        "w_out": _array(step.w_out),  # [D, V]
        "b_out": _array(step.b_out),  # [V]
    }
    for i, layer in enumerate(model.encoder.layers):
        p = f"encoder.layers.{i}."
        weights |= _norms(p, layer.sublayer)
        attn, ff = layer.self_attn, layer.feed_forward
        for name, linears in (
            ("qkv", [attn.q_proj, attn.k_proj, attn.v_proj]),
            ("self_out", [attn.out_proj]),
            ("ff_1", [ff.w_1]),
            ("ff_2", [ff.w_2]),
        ):
            weights[f"{p}w_{name}"], weights[f"{p}b_{name}"] = _linear(linears)
    if isinstance(model.encoder.norm, nn.LayerNorm):
        weights["encoder.norm.weight"] = _array(model.encoder.norm.weight)
        weights["encoder.norm.bias"] = _array(model.encoder.norm.bias)
    weights["cross.w_kv"], weights["cross.b_kv"] = _linear(
        [
            proj
            for layer in model.decoder.layers
            for proj in (layer.src_attn.k_proj, layer.src_attn.v_proj)
        ]
    )
    for i, layer in enumerate(step.layers):
        weights |= _norms(f"layers.{i}.", layer.sublayer)
        for name in DECODER_MATRICES:
            weights[f"layers.{i}.w_{name}"] = _array(getattr(layer, f"w_{name}"))
            weights[f"layers.{i}.b_{name}"] = _array(getattr(layer, f"b_{name}"))
    if isinstance(step.norm, nn.LayerNorm):
        weights["norm.weight"], weights["norm.bias"] = (
            _array(step.norm.weight),
            _array(step.norm.bias),
        )
    return weights


def native_settings(model: EncoderDecoder) -> dict[str, object]:
    """What the native translator needs besides the weights: decoder and encoder layers,
    heads, pre- or post-norm, the feed-forward activation and the norms' epsilon."""
    first = model.decoder.layers[0]
    norm = first.sublayer[0].norm
    return {
        "num_layers": len(model.decoder.layers),
        "encoder_layers": len(model.encoder.layers),
        "num_heads": first.self_attn.h,
        "norm_first": bool(first.sublayer[0].norm_first),
        "activation": ACTIVATIONS[type(first.feed_forward.act)],
        "eps": float(norm.eps),
    }


def write_native_weights(model: EncoderDecoder, folder: Path) -> Path:
    """native.npz in `folder`: the weights, and the settings as JSON under `settings`
    (uncompressed: it loads as fast as it reads)."""
    path = folder / FILE
    settings = np.array(json.dumps(native_settings(model)))
    np.savez(path, settings=settings, **native_weights(model))
    return path
