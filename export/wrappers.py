"""Export-only modules: the trained network with its scaling baked in as constants."""

from __future__ import annotations

import torch
from torch import nn

from training.models.window_scaling import WindowScaled


class ForecasterGraph(nn.Module):
    """Raw units in, raw units out: standardise `past`, run the network, calibrate the
    quantiles, un-standardise.

    Inputs: past [B, L, F_in] raw, future [B, H, F_fut] (only when the network takes covariates).
    Outputs: forecast [B, H, F_out] raw, and quantiles [B, H, F_out, Q] raw when trained with them.
    `calibration` [H, F_out, Q] holds the conformal offsets training fitted on validation
    (standardised units; for a window-scaled network, units of each window's target scale);
    they are added and the quantiles sorted, as training/calibration.py `apply`.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: list[float],
        std: list[float],
        target_index: tuple[int, ...],
        calibration: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        t = list(target_index)
        mean_ = torch.tensor(mean, dtype=torch.float32)
        std_ = torch.tensor(std, dtype=torch.float32)
        self.register_buffer("mean", mean_)  # [F_in]
        self.register_buffer("std", std_)  # [F_in]
        self.register_buffer("target_mean", mean_[t].clone())  # [F_out]
        self.register_buffer("target_std", std_[t].clone())  # [F_out]
        self.register_buffer("calibration", calibration)  # [H, F_out, Q] or None
        self.levels = 0 if calibration is None else int(calibration.shape[-1])  # Q, a constant

    def forward(
        self, past: torch.Tensor, future: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        scaled = (past - self.mean) / self.std  # [B, L, F_in]
        forecast, quantiles = self.net(scaled, future)
        forecast = forecast * self.target_std + self.target_mean  # [B, H, F_out]
        if quantiles is None:
            return forecast
        if self.calibration is not None:
            offset = self.calibration  # [H, F_out, Q]
            if isinstance(self.net, WindowScaled):  # offsets in units of each window's scale
                offset = offset * self.net.target_scale(scaled).unsqueeze(-1)  # [B, H, F_out, Q]
            # sorted ascending; topk with a constant k exports without a Shape node
            quantiles = torch.topk(
                quantiles + offset, self.levels, dim=-1, largest=False
            ).values  # [B, H, F_out, Q]
        scale, shift = self.target_std[:, None], self.target_mean[:, None]  # [F_out, 1]
        quantiles = quantiles * scale + shift  # [B, H, F_out, Q]
        return forecast, quantiles
