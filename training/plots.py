"""A picture of a few test windows: history, truth, forecast and the quantile band."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_forecasts(
    path: Path,
    history: np.ndarray,
    truth: np.ndarray,
    forecast: np.ndarray,
    quantiles: np.ndarray | None,
    levels: tuple[float, ...],
    title: str,
    name: str,
) -> Path:
    """history [W, L], truth [W, H], forecast [W, H], quantiles [W, H, Q] or None, raw units,
    for one target channel: one panel per window, written as a PNG."""
    n = len(history)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n), squeeze=False)
    L, H = history.shape[1], truth.shape[1]  # noqa: N806
    past_x, future_x = np.arange(-L, 0), np.arange(H)
    for k, ax in enumerate(axes[:, 0]):
        ax.plot(past_x, history[k], color="0.4", lw=1, label="history")
        ax.plot(future_x, truth[k], color="black", lw=1, label="truth")
        ax.plot(future_x, forecast[k], color="C0", lw=1.5, label="forecast")
        if quantiles is not None and quantiles.shape[-1] >= 2:
            lo, hi = quantiles[k, :, 0], quantiles[k, :, -1]
            ax.fill_between(
                future_x, lo, hi, color="C0", alpha=0.2, label=f"q{levels[0]:g} to q{levels[-1]:g}"
            )
        ax.axvline(0, color="0.7", lw=0.8)
        ax.set_ylabel(name)
    axes[0, 0].set_title(title)
    axes[0, 0].legend(loc="upper left", fontsize=8, ncol=4)
    axes[-1, 0].set_xlabel("steps from the forecast origin")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
