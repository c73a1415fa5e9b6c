"""The decoder step written with onnxruntime's fused operators: a lever measured by
`bench/decoder_levers.py` and not shipped, because it did not pay (docs/benchmarks.md,
"int8 against CTranslate2 int8 on the Multi30k model").

It computes the same step as `export.decoder_step.DecoderStep` (same inputs, outputs and
weights) with about half the nodes:

- each attention is one `com.microsoft.MultiHeadAttention`: the head split, the scores, the
  mask, the softmax, the weighted sum and (self-attention) the cache append `present = past ++
  new` in one kernel. Self-attention takes its query, key and value from one [D, 3D] MatMul
  and its biases inside the kernel; cross-attention reads the encoder's keys and values
  [R, H, S, K] as they are;
- each residual add and the norm after it (post-norm) or before the next sublayer (pre-norm)
  are one `com.microsoft.SkipLayerNormalization`, which also adds the projection's bias;
- activations stay [R, 1, D], the shape the attention kernel wants, so no reshapes.

The MatMuls stay plain MatMuls, so `quantize_dynamic` turns them into int8 ones. The graph is
written with `onnx.helper` from DecoderStep's pre-transposed weights.

Legend: R rows, P cached length, S source length, D model width, H heads, K head width,
F feed-forward width, V vocabulary.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from core.translation import graphs as graph_names
from export.decoder_step import DecoderStep, StepLayer
from training.models.transformer import NEG_INF

MS = "com.microsoft"
OPSET = 17
ACTIVATIONS = {"ReLU": "Relu", "GELU": "Gelu", "SiLU": "Swish"}


class _Graph:
    """Nodes and initializers under construction; names are made unique by a counter."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: torch.Tensor | np.ndarray) -> str:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(
        self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs: object
    ) -> list[str]:
        self._n += 1
        domain = MS if op_type in ("MultiHeadAttention", "SkipLayerNormalization", "Gelu") else ""
        if isinstance(outputs, int):
            outputs = [f"{op_type.lower()}_{self._n}_{i}" for i in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op_type, inputs, outputs, name=f"{op_type}_{self._n}", domain=domain, **attrs
            )
        )
        return outputs


def _norm_weights(g: _Graph, norm: torch.nn.Module, name: str) -> tuple[str, str]:
    return g.const(f"{name}.gamma", norm.weight), g.const(f"{name}.beta", norm.bias)


def _activation(g: _Graph, x: str, act: torch.nn.Module) -> str:
    kind = ACTIVATIONS[type(act).__name__]
    if kind == "Swish":  # x * sigmoid(x)
        return g.op("Mul", [x, g.op("Sigmoid", [x])[0]])[0]
    return g.op(kind, [x])[0]


class _Layers:
    """The decoder layers' residual stream: keeps the pending residual (the stream x and a
    sublayer's output not yet added to it) so that the add and a norm fuse."""

    def __init__(self, g: _Graph, x: str, pre_norm: bool) -> None:
        self.g, self.x, self.pre_norm = g, x, pre_norm
        self.pending: tuple[str, str] | None = None  # (sublayer output, its bias)

    def normed(self, norm: torch.nn.Module, name: str) -> str:
        """LN(x) after adding any pending sublayer output to x (pre-norm's input to the
        next sublayer, or the final norm)."""
        gamma, beta = _norm_weights(self.g, norm, name)
        if self.pending is None:
            return self.g.op(
                "LayerNormalization", [self.x, gamma, beta], axis=-1, epsilon=norm.eps
            )[0]
        out, bias = self.pending
        h, _, _, self.x = self.g.op(
            "SkipLayerNormalization", [out, self.x, gamma, beta, bias], 4, epsilon=norm.eps
        )
        self.pending = None
        return h

    def residual(self, out: str, bias: str, norm: torch.nn.Module, name: str) -> None:
        """x + out + bias, then (post-norm) its norm now or (pre-norm) with the next norm."""
        if self.pre_norm:
            self.pending = (out, bias)
            return
        gamma, beta = _norm_weights(self.g, norm, name)
        self.x = self.g.op(
            "SkipLayerNormalization", [out, self.x, gamma, beta, bias], 1, epsilon=norm.eps
        )[0]

    def sublayer_input(self, norm: torch.nn.Module, name: str) -> str:
        return self.normed(norm, name) if self.pre_norm else self.x

    def finish(self) -> str:
        """The stream after the last sublayer's residual (pre-norm: not yet added)."""
        if self.pending is not None:
            out, bias = self.pending
            self.x = self.g.op("Add", [self.g.op("Add", [out, bias])[0], self.x])[0]
            self.pending = None
        return self.x


def _layer(g: _Graph, stream: _Layers, layer: StepLayer, i: int, biases: tuple[str, str]) -> None:
    """One decoder layer on the stream; its attention writes present_k_i, present_v_i
    [R, H, P+1, K]."""
    self_bias, src_bias = biases
    heads = layer.heads
    p = f"layer{i}"
    norms = [s.norm for s in layer.sublayer]
    # self-attention: one projection to q, k, v [R, 1, 3D], biases added inside the kernel
    h = stream.sublayer_input(norms[0], f"{p}.norm0")
    qkv = g.op("MatMul", [h, g.const(f"{p}.w_qkv", layer.w_qkv)])[0]
    q, k, v = g.op("Split", [qkv], 3, axis=-1)  # three equal parts
    attn = g.op(
        "MultiHeadAttention",
        [q, k, v, g.const(f"{p}.b_qkv", layer.b_qkv), "", self_bias, f"past_k_{i}", f"past_v_{i}"],
        [f"mha_self_{i}", f"present_k_{i}", f"present_v_{i}"],
        num_heads=heads,
    )[0]
    out = g.op("MatMul", [attn, g.const(f"{p}.w_self_out", layer.w_self_out)])[0]
    stream.residual(out, g.const(f"{p}.b_self_out", layer.b_self_out), norms[0], f"{p}.norm0")
    # cross-attention over the encoder's keys and values [R, H, S, K]
    h = stream.sublayer_input(norms[1], f"{p}.norm1")
    q = g.op("MatMul", [h, g.const(f"{p}.w_cross_q", layer.w_cross_q)])[0]
    q = g.op("Add", [q, g.const(f"{p}.b_cross_q", layer.b_cross_q)])[0]
    attn = g.op(
        "MultiHeadAttention",
        [q, f"cross_k_{i}", f"cross_v_{i}", "", "", src_bias],
        [f"mha_cross_{i}"],
        num_heads=heads,
    )[0]
    out = g.op("MatMul", [attn, g.const(f"{p}.w_cross_out", layer.w_cross_out)])[0]
    stream.residual(out, g.const(f"{p}.b_cross_out", layer.b_cross_out), norms[1], f"{p}.norm1")
    # feed-forward [R, 1, D] -> [R, 1, F] -> [R, 1, D]
    h = stream.sublayer_input(norms[2], f"{p}.norm2")
    f = g.op("MatMul", [h, g.const(f"{p}.w_ff_1", layer.w_ff_1)])[0]
    f = _activation(g, g.op("Add", [f, g.const(f"{p}.b_ff_1", layer.b_ff_1)])[0], layer.act)
    out = g.op("MatMul", [f, g.const(f"{p}.w_ff_2", layer.w_ff_2)])[0]
    stream.residual(out, g.const(f"{p}.b_ff_2", layer.b_ff_2), norms[2], f"{p}.norm2")


def fused_decoder(step: DecoderStep) -> onnx.ModelProto:
    """decoder.onnx (names and shapes in core.translation.graphs) from DecoderStep's weights."""
    g = _Graph()
    layers = list(step.layers)
    n, heads, head_dim = len(layers), layers[0].heads, layers[0].head_dim
    d = heads * head_dim
    vocab = step.w_out.shape[1]
    # embedding (its sqrt(D) scale folded into the table: the same float products) + position
    table = step.embed.lut.weight.detach() * step.embed.scale  # [V, D]
    x = g.op("Gather", [g.const("embed", table), "tokens"], axis=0)[0]  # [R, 1, D]
    pe = g.op("Gather", [g.const("positions_table", step.position.pe), "positions"], axis=0)[0]
    x = g.op("Add", [x, pe])[0]
    # additive masks [R, 1, 1, P+1] and [R, 1, 1, S], built once for every layer
    zero = g.const("zero", np.array(0.0, np.float32))
    neg = g.const("neg_inf", np.array(NEG_INF, np.float32))
    axes = g.const("axes_1_2", np.array([1, 2], np.int64))
    minus_one = g.const("minus_one", np.array(-1, np.int64))
    new_slot = g.op("Greater", ["positions", minus_one])[0]  # [R, 1], all True
    slots = g.op("Concat", ["past_mask", new_slot], axis=1)[0]  # [R, P+1]
    self_bias = g.op("Unsqueeze", [g.op("Where", [slots, zero, neg])[0], axes])[0]
    src_bias = g.op("Unsqueeze", [g.op("Where", ["src_mask", zero, neg])[0], axes])[0]
    pre_norm = layers[0].sublayer[0].norm_first
    stream = _Layers(g, x, pre_norm)
    for i, layer in enumerate(layers):  # writes present_k_i, present_v_i
        _layer(g, stream, layer, i, (self_bias, src_bias))
    if pre_norm:
        h = stream.normed(step.norm, "final_norm")
    else:
        h = stream.finish()
    logits = g.op("MatMul", [h, g.const("w_out", step.w_out)])[0]
    logits = g.op("Add", [logits, g.const("b_out", step.b_out)])[0]  # [R, 1, V]
    log_probs = g.op("LogSoftmax", [logits], axis=-1)[0]
    g.op("Squeeze", [log_probs, g.const("axis_1", np.array([1], np.int64))], ["log_probs"])

    def value(name: str, elem: int, shape: list[object]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, elem, shape)

    f32, i64, b = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    inputs = [
        value("tokens", i64, ["rows", 1]),
        value("positions", i64, ["rows", 1]),
        value("past_mask", b, ["rows", "past_len"]),
        value("src_mask", b, ["rows", "src_len"]),
    ]
    for name, length in (
        ("past_k", "past_len"),
        ("past_v", "past_len"),
        ("cross_k", "src_len"),
        ("cross_v", "src_len"),
    ):
        inputs += [value(f"{name}_{i}", f32, ["rows", heads, length, head_dim]) for i in range(n)]
    outputs = [value("log_probs", f32, ["rows", vocab])]
    for name in ("present_k", "present_v"):
        outputs += [
            value(f"{name}_{i}", f32, ["rows", heads, "present_len", head_dim]) for i in range(n)
        ]
    assert [i.name for i in inputs] == graph_names.decoder_inputs(n)
    assert [o.name for o in outputs] == graph_names.decoder_outputs(n)
    assert d == step.w_out.shape[0]
    graph = helper.make_graph(g.nodes, "decoder_step", inputs, outputs, g.weights)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
