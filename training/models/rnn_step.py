"""One recurrent step written out from an nn.GRU / nn.LSTM layer's own weights.

SegRNN's parallel decoding runs one step for each of the M output segments, all from the same
encoder state. Written out, the hidden-state half of every gate (W_hh h) is computed once per
sequence instead of M times, and the input half (W_ih x) once per (channel, segment) when the
inputs are the shared embeddings: the same numbers as feeding nn.GRU/nn.LSTM B*C*M copies, at
about half the cost. Gate layouts are PyTorch's: GRU (r, z, n), LSTM (i, f, g, o).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def layer_weights(rnn: nn.RNNBase, layer: int) -> tuple[torch.Tensor, ...]:
    """(W_ih, W_hh, b_ih, b_hh) of one layer; W: [G*D, D_in], b: [G*D], G = 3 (GRU) or 4."""
    return tuple(
        getattr(rnn, f"{kind}_l{layer}")
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )


def gru_step(
    gi: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor
) -> torch.Tensor:
    """gi = W_ih x + b_ih [..., 3D] and h [..., D] (broadcastable) -> h' [..., D]."""
    gh = F.linear(h, w_hh, b_hh)  # [..., 3D]
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def lstm_step(
    gi: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """gi = W_ih x + b_ih [..., 4D], h and c [..., D] (broadcastable) -> (h', c')."""
    i, f, g, o = (gi + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
