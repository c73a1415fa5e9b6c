"""The written-out recurrent step (training/models/rnn_step.py) is nn.GRU's / nn.LSTM's own
step: SegRNN's decoder relies on it to skip the copies nn.GRU would need."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from training.models.rnn_step import gru_step, layer_weights, lstm_step


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_step_equals_torch_for_every_layer(cell: str, layers: int) -> None:
    torch.manual_seed(0)
    B, D_in, D = 5, 6, 8  # noqa: N806
    rnn = (nn.GRU if cell == "gru" else nn.LSTM)(D_in, D, num_layers=layers, batch_first=True)
    x = torch.randn(B, 1, D_in)  # one step
    h0 = torch.randn(layers, B, D)
    c0 = torch.randn(layers, B, D)
    with torch.no_grad():
        if cell == "gru":
            _, h_torch = rnn(x, h0)  # [layers, B, D]
        else:
            _, (h_torch, c_torch) = rnn(x, (h0, c0))
        inp = x[:, 0]  # [B, D_in]
        for layer in range(layers):
            w_ih, w_hh, b_ih, b_hh = layer_weights(rnn, layer)
            gi = F.linear(inp, w_ih, b_ih)  # [B, G*D]
            if cell == "gru":
                inp = gru_step(gi, h0[layer], w_hh, b_hh)
            else:
                inp, c = lstm_step(gi, h0[layer], c0[layer], w_hh, b_hh)
                torch.testing.assert_close(c, c_torch[layer], rtol=0, atol=1e-6)
            torch.testing.assert_close(inp, h_torch[layer], rtol=0, atol=1e-6)


def test_the_step_broadcasts_one_input_half_over_many_states() -> None:
    """The shared-embedding case: the input half computed once, broadcast against M states,
    gives what M separate nn.GRU calls give."""
    torch.manual_seed(1)
    rnn = nn.GRU(4, 6, batch_first=True)
    w_ih, w_hh, b_ih, b_hh = layer_weights(rnn, 0)
    x = torch.randn(3, 4)  # [M, D_in]: one input per segment
    h = torch.randn(1, 6)  # one encoder state for all M
    with torch.no_grad():
        stepped = gru_step(F.linear(x, w_ih, b_ih), h, w_hh, b_hh)  # [M, D]
        one_by_one = torch.cat([rnn(x[m].view(1, 1, 4), h.view(1, 1, 6))[1][0] for m in range(3)])
    torch.testing.assert_close(stepped, one_by_one, rtol=0, atol=1e-6)
