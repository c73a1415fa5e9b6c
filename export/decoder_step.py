"""The decoder step in its inference layout: what export writes as `decoder.onnx`.

It computes `EncoderDecoder.decode_step` on the same weights (export checks the two against
each other to 1e-4, and greedy decoding token for token) with less work per step, because a
step always has exactly one new position per row:

- activations are [R, D] rather than [R, 1, D], so each projection is a 2-D MatMul + Add,
  which onnxruntime fuses into one Gemm when it loads the graph (and int8 quantisation still
  finds the MatMul);
- self-attention's query, key and value projections are one [D, 3D] matrix (1/sqrt(K) stays
  a multiplication of the query: folded into the weights it would cost the query three bits
  under int8's one scale per matrix);
- the two masks become additive biases (0 or -1e9), built once per step for every layer;
- the caches come and go one tensor per layer (past_k_0, ..., present_v_{L-1}): stacked
  [L, ...] tensors cost a split on the way in and a stack on the way out, two copies of the
  cache per step.

On the 4 + 2 Multi30k model the step is about 1.1x faster than the plain export of
`decode_step` (8 rows, 16 cached positions, one thread; docs/notes/benchmarks-history.md,
"The decoder step's inference layout"). The training model keeps the Annotated Transformer
form; this module only reads its weights.

Legend: R rows, P cached length, S source length, D model width, H heads, K head width,
L decoder layers, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual alias

from training.models.transformer import NEG_INF, DecoderLayer, EncoderDecoder


def _weight(linear: nn.Linear) -> torch.Tensor:
    """nn.Linear's weight [out, in] as the right operand of x @ w: [in, out]."""
    return linear.weight.t().detach().contiguous()


def _bias(linear: nn.Linear) -> torch.Tensor:
    return linear.bias.detach().clone()


class StepLayer(nn.Module):
    """One decoder layer for one new position per row, on fused, pre-transposed weights."""

    def __init__(self, layer: DecoderLayer) -> None:
        super().__init__()
        sa, ca, ff = layer.self_attn, layer.src_attn, layer.feed_forward
        self.heads, self.head_dim = sa.h, sa.d_k
        self.scale = 1 / math.sqrt(sa.d_k)
        # the residual around each sublayer, pre- or post-norm, as the layer has it (its
        # dropout is the identity in eval mode)
        self.sublayer = layer.sublayer
        self.act = ff.act
        self.register_buffer(
            "w_qkv", torch.cat([_weight(sa.q_proj), _weight(sa.k_proj), _weight(sa.v_proj)], dim=1)
        )  # [D, 3D]
        self.register_buffer(
            "b_qkv", torch.cat([_bias(sa.q_proj), _bias(sa.k_proj), _bias(sa.v_proj)])
        )  # [3D]
        for name, linear in (
            ("self_out", sa.out_proj),
            ("cross_q", ca.q_proj),
            ("cross_out", ca.out_proj),
            ("ff_1", ff.w_1),
            ("ff_2", ff.w_2),
        ):
            self.register_buffer(f"w_{name}", _weight(linear))
            self.register_buffer(f"b_{name}", _bias(linear))

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """q [R, H, 1, K] over k/v [R, H, T, K]; bias [R, 1, 1, T] -> [R, D]."""
        scores = (q * self.scale) @ k.transpose(-2, -1) + bias  # [R, H, 1, T]
        out = scores.softmax(dim=-1) @ v  # [R, H, 1, T] x [R, H, T, K] -> [R, H, 1, K]
        return out.reshape(out.size(0), self.heads * self.head_dim)  # [R, D]

    def forward(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        self_bias: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        src_bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [R, D], past_k/v [R, H, P, K], self_bias [R, 1, 1, P+1], cross_k/v [R, H, S, K],
        src_bias [R, 1, 1, S] -> (x [R, D], present_k/v [R, H, P+1, K])."""
        r, h, k_dim = x.size(0), self.heads, self.head_dim
        present: list[torch.Tensor] = []  # this layer's keys and values, [R, H, P+1, K] each

        def self_attention(x: torch.Tensor) -> torch.Tensor:  # [R, D] -> [R, D]
            qkv = x @ self.w_qkv + self.b_qkv  # [R, 3D]
            q, k, v = qkv.view(r, 3 * h, 1, k_dim).split(h, dim=1)  # [R, H, 1, K] each
            present.extend((torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)))
            return self.attend(q, *present, self_bias) @ self.w_self_out + self.b_self_out

        def cross_attention(x: torch.Tensor) -> torch.Tensor:  # [R, D] -> [R, D]
            q = (x @ self.w_cross_q + self.b_cross_q).view(r, h, 1, k_dim)  # [R, H, 1, K]
            return self.attend(q, cross_k, cross_v, src_bias) @ self.w_cross_out + self.b_cross_out

        def feed_forward(x: torch.Tensor) -> torch.Tensor:  # [R, D] -> [R, F] -> [R, D]
            return self.act(x @ self.w_ff_1 + self.b_ff_1) @ self.w_ff_2 + self.b_ff_2

        x = self.sublayer[0](x, self_attention)
        x = self.sublayer[1](x, cross_attention)
        k, v = present
        return self.sublayer[2](x, feed_forward), k, v


class DecoderStep(nn.Module):
    """`decode_step` of a trained EncoderDecoder, for export (inputs and outputs as there)."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.embed, self.position = model.tgt_embed, model.position
        self.layers = nn.ModuleList(StepLayer(layer) for layer in model.decoder.layers)
        self.norm = model.decoder.norm
        self.register_buffer("w_out", _weight(model.generator.proj))  # [D, V]
        self.register_buffer("b_out", _bias(model.generator.proj))  # [V]

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        past_mask: torch.Tensor,
        src_mask: torch.Tensor,
        *caches: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """tokens/positions [R, 1] int64, past_mask [R, P], src_mask [R, S], then per layer
        past_k_i..., past_v_i... [R, H, P, K] and cross_k_i..., cross_v_i... [R, H, S, K]
        -> log_probs [R, V], present_k_i..., present_v_i... [R, H, P+1, K]
        (core.translation.graphs.decoder_inputs / decoder_outputs name them)."""
        hidden, present = self.hidden(tokens, positions, past_mask, src_mask, *caches)
        logits = hidden @ self.w_out + self.b_out  # [R, V]
        return (F.log_softmax(logits, dim=-1), *(k for k, _ in present), *(v for _, v in present))

    def hidden(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        past_mask: torch.Tensor,
        src_mask: torch.Tensor,
        *caches: torch.Tensor,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """`forward` up to the output projection: (the final norm's output [R, D], per layer
        (present_k, present_v) [R, H, P+1, K] each)."""
        n = len(self.layers)
        past_k, past_v, cross_k, cross_v = (caches[j * n : (j + 1) * n] for j in range(4))
        x = self.embed(tokens[:, 0]) + self.position.pe[positions[:, 0]]  # [R, D]
        new_slot = torch.ones_like(tokens, dtype=torch.bool)  # [R, 1]
        self_bias = torch.where(torch.cat([past_mask, new_slot], dim=1), 0.0, NEG_INF)
        self_bias = self_bias[:, None, None, :]  # [R, 1, 1, P+1]
        src_bias = torch.where(src_mask, 0.0, NEG_INF)[:, None, None, :]  # [R, 1, 1, S]
        present: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer [R, H, P+1, K] x2
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, past_k[i], past_v[i], self_bias, cross_k[i], cross_v[i], src_bias)
            present.append((k, v))
        return self.norm(x), present
