"""numpy references of the native translator's int8 arithmetic (core/native/src): the oracles
its tests hold the decoder step and the encoder to, written from the definitions (gemm.h's
quantisation, the layers of export/decoder_step.py and export/translator_graphs.py), not from
the C++."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def qmatmul(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The native step's int8 product in numpy (core/native/src/gemm.h): int8 weights, one
    symmetric scale per output column; uint8 inputs, one scale and zero point per row whose
    range holds 0; exact integer sums; the scales applied last."""
    amax = np.abs(w).max(0)
    sw = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    qw = np.clip(np.rint(w / sw), -127, 127).astype(np.int64)
    lo, hi = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
    sx = ((hi - lo) / np.float32(255)).astype(np.float32)
    sx = np.where(sx > 0, sx, np.float32(1)).astype(np.float32)
    inv = (np.float32(1) / sx).astype(np.float32)
    zx = np.rint(-lo * inv).astype(np.float32)
    qx = np.clip(np.rint(x * inv[:, None]) + zx[:, None], 0, 255).astype(np.int64)
    acc = qx @ qw - zx.astype(np.int64)[:, None] * qw.sum(0)[None, :]
    return (sx[:, None] * sw[None, :] * acc.astype(np.float32) + b).astype(np.float32)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(1, keepdims=True) + eps) * gamma + beta


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """q [R, H, K] over k/v [R, H, T, K], valid [R, T] -> [R, H, K]."""
    scores = np.einsum("rhk,rhtk->rht", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(valid[:, None, :], scores, -1e9)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return np.einsum("rht,rhtk->rhk", p / p.sum(-1, keepdims=True), v)


ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(torch.from_numpy(x / np.sqrt(2))).numpy()),
    "swish": lambda x: x / (1 + np.exp(-x)),
}


def linear(w: dict[str, np.ndarray], prefix: str, name: str, x: np.ndarray) -> np.ndarray:
    return qmatmul(x, w[f"{prefix}w_{name}"], w[f"{prefix}b_{name}"])


def sublayer(
    w: dict[str, np.ndarray], settings: dict[str, Any], prefix: str, j: int, x: np.ndarray, f: Any
) -> np.ndarray:
    """The residual around sublayer j: pre-norm x + f(norm(x)), post-norm norm(x + f(x))."""
    g, b, eps = w[f"{prefix}norm{j}.weight"], w[f"{prefix}norm{j}.bias"], settings["eps"]
    if settings["norm_first"]:
        return x + f(layer_norm(x, g, b, eps))
    return layer_norm(x + f(x), g, b, eps)


def reference_step(
    w: dict[str, np.ndarray], settings: dict[str, Any], *inputs: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """What the native decoder step computes, in numpy on the same names: its test oracle."""
    tokens, positions, past_k, past_v, past_mask, cross_k, cross_v, src_mask = inputs
    heads, act = settings["num_heads"], ACTIVATIONS[settings["activation"]]
    x = w["embed"][tokens[:, 0]] + w["positions"][positions[:, 0]]  # [R, D]
    rows, d = x.shape
    valid = np.concatenate([past_mask, np.ones((rows, 1), bool)], 1)  # [R, P+1]
    present_k, present_v = [], []
    for i in range(settings["num_layers"]):
        p = f"layers.{i}."

        def self_attention(h: np.ndarray, i: int = i, p: str = p) -> np.ndarray:
            qkv = linear(w, p, "qkv", h).reshape(rows, 3, heads, d // heads)
            k = np.concatenate([past_k[i], qkv[:, 1, :, None]], 2)
            v = np.concatenate([past_v[i], qkv[:, 2, :, None]], 2)
            present_k.append(k)
            present_v.append(v)
            return linear(w, p, "self_out", attend(qkv[:, 0], k, v, valid).reshape(rows, d))

        def cross_attention(h: np.ndarray, i: int = i, p: str = p) -> np.ndarray:
            q = linear(w, p, "cross_q", h).reshape(rows, heads, d // heads)
            out = attend(q, cross_k[i], cross_v[i], src_mask).reshape(rows, d)
            return linear(w, p, "cross_out", out)

        def feed_forward(h: np.ndarray, p: str = p) -> np.ndarray:
            return linear(w, p, "ff_2", act(linear(w, p, "ff_1", h)))

        x = sublayer(w, settings, p, 0, x, self_attention)
        x = sublayer(w, settings, p, 1, x, cross_attention)
        x = sublayer(w, settings, p, 2, x, feed_forward)
    if "norm.weight" in w:
        x = layer_norm(x, w["norm.weight"], w["norm.bias"], settings["eps"])
    logits = qmatmul(x, w["w_out"], w["b_out"])  # [R, V]
    top = logits.max(1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True)), present_k, present_v


def reference_encoder(
    w: dict[str, np.ndarray], settings: dict[str, Any], src_ids: np.ndarray, src_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """What the native encoder computes, in numpy: its test oracle. -> cross_k, cross_v
    [L, B, H, S, K]."""
    heads, act = settings["num_heads"], ACTIVATIONS[settings["activation"]]
    batch, src = src_ids.shape
    d = w["positions"].shape[1]
    k_dim = d // heads
    x = (w["encoder.embed"][src_ids] + w["positions"][:src][None]).reshape(batch * src, d)
    for i in range(settings["encoder_layers"]):
        p = f"encoder.layers.{i}."

        def self_attention(h: np.ndarray, p: str = p) -> np.ndarray:
            qkv = linear(w, p, "qkv", h).reshape(batch, src, 3, heads, k_dim)
            q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # [B, H, S, K]
            scores = np.einsum("bhsk,bhtk->bhst", q, k) / np.sqrt(k_dim)
            scores = np.where(src_mask[:, None, None, :], scores, -1e9)
            prob = np.exp(scores - scores.max(-1, keepdims=True))
            out = np.einsum("bhst,bhtk->bshk", prob / prob.sum(-1, keepdims=True), v)
            return linear(w, p, "self_out", out.reshape(batch * src, d))

        def feed_forward(h: np.ndarray, p: str = p) -> np.ndarray:
            return linear(w, p, "ff_2", act(linear(w, p, "ff_1", h)))

        x = sublayer(w, settings, p, 0, x, self_attention)
        x = sublayer(w, settings, p, 1, x, feed_forward)
    if "encoder.norm.weight" in w:
        x = layer_norm(x, w["encoder.norm.weight"], w["encoder.norm.bias"], settings["eps"])
    kv = qmatmul(x, w["cross.w_kv"], w["cross.b_kv"])  # [B S, 2 L D]
    kv = kv.reshape(batch, src, settings["num_layers"], 2, heads, k_dim)
    return kv[:, :, :, 0].transpose(2, 0, 3, 1, 4), kv[:, :, :, 1].transpose(2, 0, 3, 1, 4)
