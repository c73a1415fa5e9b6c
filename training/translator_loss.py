"""The translator's training loss: label-smoothed cross-entropy, optionally with R-Drop.

R-Drop (Liang et al. 2021, "R-Drop: Regularized Dropout for Neural Networks"): every batch
goes through the model twice, so two dropout masks give two output distributions, and the
loss adds the symmetric KL divergence between them. The two copies run as one doubled batch,
so a step costs about what a batch of twice the tokens costs, plus the KL term's passes over
the [N, V] log-probabilities. `alpha` weighs the KL term against the cross-entropy as
fairseq's `--rdrop-alpha` does (fairseq divides the same sum by one copy's tokens rather than
both, a constant factor), so published values carry over.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual alias

from training.models.transformer import EncoderDecoder


def token_loss(
    model: EncoderDecoder,
    src: torch.Tensor,
    tgt_in: torch.Tensor,
    tgt_out: torch.Tensor,
    label_smoothing: float,
    rdrop_alpha: float = 0.0,
    bf16: bool = False,
    through: nn.Module | None = None,
) -> torch.Tensor:
    """Mean training loss per target token (a scalar with a graph). Only real target
    positions reach the output projection and the softmax over V. `through`, when given, is
    the module whose forward computes `model.logits` (DDP's wrapper of a `Logits`)."""
    copies = 2 if rdrop_alpha > 0 else 1
    if copies == 2:
        src, tgt_in = torch.cat([src, src]), torch.cat([tgt_in, tgt_in])  # [2B, S], [2B, T]
    target = tgt_out.repeat(copies, 1)  # [cB, T]
    keep = target != model.config.pad_id  # [cB, T]
    with torch.autocast(src.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = (through or model.logits)(src, tgt_in, keep)  # [N, V], copy 1's first
    log_probs = F.log_softmax(logits.float(), dim=-1)  # [N, V]
    nll = -log_probs.gather(1, target[keep].unsqueeze(1)).sum()
    uniform = -log_probs.sum() / log_probs.size(1)  # cross-entropy against 1/V, summed over N
    loss = (1 - label_smoothing) * nll + label_smoothing * uniform
    if copies == 2:
        lp1, lp2 = log_probs.chunk(2)  # [N/2, V] each: the same positions, two dropout samples
        # (KL(p1 || p2) + KL(p2 || p1)) / 2, summed: fairseq's symmetric R-Drop term
        loss = loss + rdrop_alpha * ((lp1.exp() - lp2.exp()) * (lp1 - lp2)).sum() / 2
    return loss / log_probs.size(0)


class Logits(nn.Module):
    """`model.logits` as a forward: DistributedDataParallel syncs gradients through forward."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.model.logits(src, tgt_in, keep)  # [N, V]
