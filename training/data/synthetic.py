"""A built-in multivariate series for the demo models and fast tests (hourly, UTC).

Three columns, like a stock and what moves it:
- `index`: a market index level, a random walk with drift plus a small daily cycle;
- `news`: hourly news-mention counts (Poisson) with a daily and weekly rhythm and bursts;
- `price`: the target. Trend, a daily cycle (trading hours), a weekly cycle (quiet weekends),
  and noise, plus the index's moves 6 hours earlier and the news bursts 12 hours earlier:
  the covariates lead the target.
"""

from __future__ import annotations

import numpy as np

from training.data.frame import Frame

COLUMNS = ("price", "index", "news")
TARGET = "price"
START = np.datetime64("2021-01-04T00:00:00", "s")  # a Monday
INDEX_LEAD = 6  # hours the index leads the price
NEWS_LEAD = 12  # hours news bursts lead the price


def _lagged(x: np.ndarray, lag: int) -> np.ndarray:
    return np.concatenate([np.full(lag, x[0]), x[:-lag]])


def generate(rows: int = 8760, seed: int = 0) -> Frame:
    """`rows` hourly rows from START; the same seed gives the same series."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows + 24 * 7)  # a week of burn-in for the lags and smoothing
    hour, day = t % 24, (t // 24) % 7
    daily = np.sin(2 * np.pi * (hour - 9) / 24)  # peaks mid-afternoon
    weekend = (day >= 5).astype(np.float64)

    index = 1000 + 0.02 * t + np.cumsum(rng.normal(0, 0.8, len(t))) + 3 * daily

    bursts = (rng.random(len(t)) < 0.01) * rng.gamma(2.0, 20.0, len(t))
    kernel = np.exp(-np.arange(48) / 8.0)
    buzz = np.convolve(bursts, kernel)[: len(t)]  # decaying attention after each burst
    rate = (20 + 10 * daily) * (1 - 0.5 * weekend) + buzz
    news = rng.poisson(np.clip(rate, 0.1, None)).astype(np.float64)

    noise = np.zeros(len(t))
    eps = rng.normal(0, 0.25, len(t))
    for i in range(1, len(t)):  # AR(1) noise
        noise[i] = 0.8 * noise[i - 1] + eps[i]
    price = (
        100
        + 0.004 * t
        + 2.0 * daily * (1 - weekend)
        - 1.0 * weekend
        + 0.05 * (_lagged(index, INDEX_LEAD) - 1000)
        + 0.03 * _lagged(buzz, NEWS_LEAD)
        + noise
    )

    values = np.stack([price, index, news], axis=-1)[-rows:]  # [N, 3]
    timestamps = START + np.arange(rows).astype("timedelta64[h]")
    return Frame(timestamps.astype("datetime64[s]"), values, COLUMNS)
