"""Segment-recurrent forecaster after SegRNN (Lin et al. 2023), with the cell as a parameter.

Each target channel is forecast on its own (channel-independent, shared weights):
1. subtract the window's last value;
2. cut the L steps into L/W segments of W steps, embed each (Linear + ReLU) into D; past
   covariates (the non-target channels of `past`, MS setting) are cut the same way and their
   segments' embedding is added to every target channel's before the ReLU;
3. run the RNN over the segments; its final state summarises the window;
4. decode all H/W output segments in parallel: one RNN step per segment (rnn_step.py),
   starting from that state, fed a position embedding and a channel embedding (D/2 each), plus
   an embedding of the segment's known-future covariates when there are any;
5. dropout, Linear D -> W (and D -> W*Q for quantiles), add the last value back.
With every channel a target (M setting) this is SegRNN exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from training.config import ForecasterConfig
from training.models.quantiles import monotone
from training.models.rnn_forecaster import CELLS
from training.models.rnn_step import gru_step, layer_weights, lstm_step


class SegRNNForecaster(nn.Module):
    """Inputs: past [B, L, F_in] (standardised), future [B, H, F_fut] or None.
    Outputs: forecast [B, H, F_out] and quantiles [B, H, F_out, Q] (None without quantiles)."""

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        D, W = c.d_model, c.seg_len  # noqa: N806
        self.n_in, self.n_out = c.input_len // W, c.horizon // W
        self.n_cov = c.n_past - c.n_targets
        self.segment = nn.Linear(W, D)
        self.covariate = nn.Linear(W * self.n_cov, D) if self.n_cov else None
        self.rnn = CELLS[c.cell](
            D, D, num_layers=c.layers, batch_first=True, dropout=c.dropout if c.layers > 1 else 0.0
        )
        self.position = nn.Parameter(torch.randn(self.n_out, D // 2))
        self.channel = nn.Parameter(torch.randn(c.n_targets, D // 2))
        self.future = nn.Linear(W * c.n_future, D) if c.n_future else None
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(D, W)
        self.quantile_head = nn.Linear(D, W * len(c.quantiles)) if c.quantiles else None
        self.register_buffer("target_index", torch.tensor(c.target_index), persistent=False)
        others = [i for i in range(c.n_past) if i not in c.target_index]
        self.register_buffer(
            "covariate_index", torch.tensor(others, dtype=torch.long), persistent=False
        )

    def forward(
        self, past: torch.Tensor, future: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = self.config
        C, D, W, M, Q = c.n_targets, c.d_model, c.seg_len, self.n_out, len(c.quantiles)  # noqa: N806
        N, K = self.n_in, self.n_cov  # noqa: N806
        x = past.index_select(2, self.target_index)  # [B, L, F_in] -> [B, L, C]
        last = x[:, -1:, :].detach()  # [B, 1, C]
        x = (x - last).permute(0, 2, 1).reshape(-1, C, N, W)  # [B, C, L/W, W]
        e = self.segment(x)  # [B, C, N, D]
        if self.covariate is not None:
            cov = past.index_select(2, self.covariate_index)  # [B, L, K]
            cov = (cov - cov[:, -1:, :].detach()).reshape(-1, N, W * K)  # [B, N, W*K]
            e = e + self.covariate(cov).unsqueeze(1)  # [B, C, N, D] + [B, 1, N, D]
        e = torch.relu(e).reshape(-1, N, D)  # [B*C, N, D]
        _, state = self.rnn(e)  # h: [layers, B*C, D] (lstm: (h, c))

        # Decoder: one step per output segment, all from the encoder state (see rnn_step.py).
        emb = torch.cat(
            [
                self.position.unsqueeze(0).expand(C, -1, -1),  # [C, M, D/2]
                self.channel.unsqueeze(1).expand(-1, M, -1),
            ],  # [C, M, D/2]
            dim=-1,
        )  # [C, M, D]
        hs, cs = state if isinstance(state, tuple) else (state, None)  # [layers, B*C, D]
        out = emb
        for layer in range(c.layers):
            w_ih, w_hh, b_ih, b_hh = layer_weights(self.rnn, layer)
            gi = F.linear(out, w_ih, b_ih)  # [C, M, G*D] (layer 0) or [B, C, M, G*D]
            if layer == 0 and self.future is not None:
                fut = self.future(future.reshape(-1, M, W * c.n_future))  # [B, M, D]
                gi = gi + F.linear(fut, w_ih).unsqueeze(1)  # [C, M, G*D] + [B, 1, M, G*D]
            h = hs[layer].reshape(-1, C, 1, D)  # [B, C, 1, D]
            if cs is None:
                out = gru_step(gi, h, w_hh, b_hh)  # [B, C, M, D]
            else:
                out, _ = lstm_step(gi, h, cs[layer].reshape(-1, C, 1, D), w_hh, b_hh)
            if layer < c.layers - 1:
                out = F.dropout(out, self.rnn.dropout, self.training)
        out = self.dropout(out)
        forecast = self.head(out).reshape(-1, C, M * W).permute(0, 2, 1) + last  # [B, H, C]
        if self.quantile_head is None:
            return forecast, None
        raw = self.quantile_head(out).reshape(-1, C, M, W, Q)  # [B, C, M, W, Q]
        raw = raw.reshape(-1, C, M * W, Q).permute(0, 2, 1, 3)  # [B, H, C, Q]
        return forecast, monotone(raw) + last.unsqueeze(-1)  # [B, H, C, Q]
