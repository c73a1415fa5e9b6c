"""Standard scaling as a statistics / scale / inverse triple (numpy, no state).

`std_statistics` matches sklearn's StandardScaler: population std (ddof=0). A constant column
gets std 1 so it scales to 0 instead of dividing by zero.
"""

from __future__ import annotations

import numpy as np


def std_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, F] rows to fit on -> (mean [F], std [F]), float64."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0
    return mean, std


def std_scale(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[..., F] -> [..., F] standardised."""
    return (x - mean) / std


def inv_std_scale(z: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[..., F] standardised -> [..., F] raw units."""
    return z * std + mean
