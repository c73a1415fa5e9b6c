"""The baseline forecaster: an RNN over the input window, last hidden state -> linear head.

Direct multi-horizon: all H steps come out of one forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import ForecasterConfig
from training.models.quantiles import monotone

CELLS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}


class RNNForecaster(nn.Module):
    """Inputs: past [B, L, F_in] (standardised), future [B, H, F_fut] or None.
    Outputs: forecast [B, H, F_out] and quantiles [B, H, F_out, Q] (None without quantiles).

    Each window is shifted by its last value before the RNN and shifted back after the head.
    """

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.rnn = CELLS[c.cell](
            c.n_past,
            c.d_model,
            num_layers=c.layers,
            batch_first=True,
            dropout=c.dropout if c.layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(c.dropout)
        features = c.d_model + c.horizon * c.n_future
        self.head = nn.Linear(features, c.horizon * c.n_targets)
        self.quantile_head = (
            nn.Linear(features, c.horizon * c.n_targets * len(c.quantiles)) if c.quantiles else None
        )
        self.register_buffer("target_index", torch.tensor(c.target_index), persistent=False)

    def forward(
        self, past: torch.Tensor, future: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = self.config
        H, F_out, Q = c.horizon, c.n_targets, len(c.quantiles)  # noqa: N806
        last = past[:, -1:, :].detach()  # [B, 1, F_in]
        out, _ = self.rnn(past - last)  # [B, L, D]
        h = out[:, -1, :]  # [B, D]
        if c.n_future:
            h = torch.cat([h, future.flatten(1)], dim=-1)  # [B, D + H*F_fut]
        h = self.dropout(h)
        last_t = last.index_select(2, self.target_index)  # [B, 1, F_out]
        forecast = self.head(h).reshape(-1, H, F_out) + last_t  # [B, H, F_out]
        if self.quantile_head is None:
            return forecast, None
        raw = self.quantile_head(h).reshape(-1, H, F_out, Q)  # [B, H, F_out, Q]
        return forecast, monotone(raw) + last_t.unsqueeze(-1)  # [B, H, F_out, Q]
