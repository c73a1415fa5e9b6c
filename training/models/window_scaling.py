"""Per-window scaling inside the network (RevIN without its affine terms, Kim et al. 2022):
each input window is standardised by its own mean and standard deviation, per channel, and the
outputs are mapped back. A window then carries its own scale, so one model serves many series
of different sizes without a series id, and the exported graph does it too."""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-5  # the scale's floor, relative to the window's level (a flat window scales by it)
TINY = 1e-12  # and an absolute floor, for a flat window at zero


def window_stats(past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """past [B, L, F] -> loc [B, 1, F], scale [B, 1, F]: the mean and the population std,
    floored relative to the level, so that series of any size scale alike (the window arrives
    in raw units: see training/data/series.py `prepare`)."""
    loc = past.mean(dim=1, keepdim=True)
    var = past.var(dim=1, keepdim=True, unbiased=False)
    return loc, torch.sqrt(var + (EPS * loc) ** 2 + TINY)


class WindowScaled(nn.Module):
    """A forecaster that sees each window standardised by itself; same inputs and outputs as
    the network it wraps: past [B, L, F_in], future -> forecast [B, H, F_out], quantiles
    [B, H, F_out, Q] or None."""

    def __init__(self, net: nn.Module, target_index: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("target_index", torch.tensor(target_index), persistent=False)

    def target_scale(self, past: torch.Tensor) -> torch.Tensor:
        """past [B, L, F_in] -> [B, 1, F_out]: the targets' window scales (the loss divides
        errors by them, so every window weighs the same whatever its series' size)."""
        return window_stats(past)[1].index_select(2, self.target_index)

    def forward(
        self, past: torch.Tensor, future: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        loc, scale = window_stats(past)  # [B, 1, F_in] each
        forecast, quantiles = self.net((past - loc) / scale, future)
        loc_t, scale_t = (
            loc.index_select(2, self.target_index),
            scale.index_select(2, self.target_index),
        )
        forecast = forecast * scale_t + loc_t  # [B, H, F_out]
        if quantiles is not None:
            quantiles = quantiles * scale_t.unsqueeze(-1) + loc_t.unsqueeze(-1)  # [B, H, F_out, Q]
        return forecast, quantiles
