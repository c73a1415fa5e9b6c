"""Quantile outputs that never cross, and the pinball loss that trains them."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def monotone(raw: torch.Tensor) -> torch.Tensor:
    """[..., Q] unconstrained -> [..., Q] non-decreasing along the last axis.

    The first level is taken as is; each next one adds a softplus step (>= 0), so quantiles are
    ordered by construction, in PyTorch and in the exported graph alike.
    """
    if raw.shape[-1] == 1:
        return raw
    steps = F.softplus(raw[..., 1:])  # [..., Q-1]
    return torch.cat([raw[..., :1], raw[..., :1] + torch.cumsum(steps, dim=-1)], dim=-1)


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """pred [..., Q], target [...], levels [Q] -> mean pinball (quantile) loss."""
    diff = target.unsqueeze(-1) - pred  # [..., Q]
    return torch.maximum(levels * diff, (levels - 1) * diff).mean()
