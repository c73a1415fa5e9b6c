"""Conformal calibration of the quantile heads, and the scores that say how calibrated they are.

Split conformal prediction, one-sided per level (the one-sided form of conformalized quantile
regression, Romano et al. 2019): on the validation windows, for level tau, horizon step h and
target f, the score is s = y - q_tau, how far the truth lies above the head's quantile. The
correction c[h, f, tau] is an order statistic of those scores, so that q_tau + c has the truth
at or below it a share tau of the time on exchangeable data:
- tau > 0.5: the ceil((n + 1) tau)-th smallest score (covers at least tau);
- tau < 0.5: the floor((n + 1) tau)-th smallest (covers at most tau);
- tau = 0.5: the median score.
So each symmetric pair (tau, 1 - tau) brackets the truth at least 1 - 2 tau of the time.
Corrected quantiles are then sorted along the levels (rearrangement, Chernozhukov et al. 2010):
they never cross, and sorting never moves them farther from the true quantile function.

Everything here is in standardised units, as the network's outputs are, and for a window-scaled
model (many series) in each window's own units (`unit`), so that one correction fits series of
every size; the export bakes the same correction into the graph (export/wrappers.py), so every
client gets calibrated quantiles.
"""

from __future__ import annotations

import math

import numpy as np

TOLERANCE = 0.05  # coverage further than this from its level gets a warning


def offsets(
    quantiles: np.ndarray,
    target: np.ndarray,
    levels: tuple[float, ...],
    unit: np.ndarray | None = None,
) -> np.ndarray:
    """quantiles [W, H, F, Q], target [W, H, F] -> corrections [H, F, Q] (float32), in units
    of `unit` [W, F] (each window's scale, for window-scaled models; default 1)."""
    per = 1.0 if unit is None else unit[:, None, :, None]  # [W, 1, F, 1]
    scores = np.sort((target[..., None] - quantiles) / per, axis=0)  # [W, H, F, Q] ascending
    n = scores.shape[0]
    out = np.empty(scores.shape[1:], dtype=np.float32)  # [H, F, Q]
    for k, tau in enumerate(levels):
        if tau == 0.5:
            out[..., k] = np.median(scores[..., k], axis=0)
            continue
        rank = math.ceil((n + 1) * tau) if tau > 0.5 else math.floor((n + 1) * tau)
        out[..., k] = scores[min(max(rank, 1), n) - 1, ..., k]
    return out


def apply(
    quantiles: np.ndarray, correction: np.ndarray, unit: np.ndarray | None = None
) -> np.ndarray:
    """quantiles [W, H, F, Q] + corrections [H, F, Q] (times `unit` [W, F]) -> [W, H, F, Q],
    sorted along Q. ForecasterGraph does the same in the exported graph."""
    per = 1.0 if unit is None else unit[:, None, :, None]  # [W, 1, F, 1]
    return np.sort(quantiles + correction * per, axis=-1)


def pairs(levels: tuple[float, ...]) -> list[tuple[int, int]]:
    """Index pairs (lower, upper) of symmetric levels, e.g. 0.1 with 0.9: the intervals."""
    found = []
    for i, low in enumerate(levels):
        for j, high in enumerate(levels):
            if low < 0.5 and math.isclose(low + high, 1.0):
                found.append((i, j))
    return found


def scores(
    quantiles: np.ndarray, target: np.ndarray, levels: tuple[float, ...], prefix: str
) -> dict[str, float]:
    """Coverage of each level (share of targets at or below it), the mean width of each
    symmetric interval, and the mean pinball loss over levels; keys named by level, e.g.
    `test_coverage_0.9`, `test_interval_width_0.1_0.9`, `test_pinball`."""
    out: dict[str, float] = {}
    for k, tau in enumerate(levels):
        out[f"{prefix}_coverage_{tau:g}"] = float(np.mean(target <= quantiles[..., k]))
    for i, j in pairs(levels):
        width = quantiles[..., j].astype(np.float64) - quantiles[..., i]
        out[f"{prefix}_interval_width_{levels[i]:g}_{levels[j]:g}"] = float(np.mean(width))
    diff = target[..., None].astype(np.float64) - quantiles  # [W, H, F, Q]
    tau = np.asarray(levels)
    out[f"{prefix}_pinball"] = float(np.mean(np.maximum(tau * diff, (tau - 1) * diff)))
    return out


def held_out_coverage(
    quantiles: np.ndarray,
    target: np.ndarray,
    levels: tuple[float, ...],
    horizon: int,
    unit: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> list[float]:
    """Coverage of calibrated quantiles on windows the correction did not see: the validation
    windows of each series (`groups` [W], in time order within each) in two halves by time,
    each corrected with the other half's offsets, the two coverages averaged. The H windows
    at the seam, which share targets with both halves, are left out. (Coverage on the windows
    the correction came from would be close to the levels by construction, and says
    nothing.) NaN for each level when there are too few windows to hold half of them out."""
    unit = np.ones((target.shape[0], target.shape[2])) if unit is None else unit  # [W, F]
    groups = np.zeros(len(target), int) if groups is None else groups
    first, second = [], []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        half = len(rows) // 2
        first.append(rows[: max(half - horizon, 0)])
        second.append(rows[half:])
    halves = np.concatenate(first), np.concatenate(second)
    if not (len(halves[0]) and len(halves[1])):
        return [math.nan] * len(levels)  # too few windows to hold any out
    covered = []
    for fit, check in (halves, halves[::-1]):
        correction = offsets(quantiles[fit], target[fit], levels, unit[fit])
        fixed = apply(quantiles[check], correction, unit[check])
        covered.append(np.mean(target[check][..., None] <= fixed, axis=(0, 1, 2)))  # [Q]
    return [float(c) for c in np.mean(covered, axis=0)]


def off_levels(coverage: list[float], levels: tuple[float, ...]) -> list[str]:
    """The levels whose coverage is further than TOLERANCE from them, in words."""
    return [
        f"{tau:g} covers {c:.3f}"
        for tau, c in zip(levels, coverage, strict=True)
        if abs(c - tau) > TOLERANCE
    ]
