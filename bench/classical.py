"""Classical baselines beside a trained forecaster, on the same test windows and the same scale:
naive (repeat the last value), seasonal naive, ETS and ARIMA (statsmodels, the `bench` extra).

For each target, ETS and ARIMA are fitted once, on the train and validation rows (the rows the
network learned and was selected on; at most FIT_ROWS of them, the latest), in the standardised
units the network's metrics use. Each test window is then forecast with those parameters fixed:
the model is run over the window's context (its last CONTEXT rows, at least the L rows the
network sees) and forecasts H steps, with Gaussian quantiles at the network's levels. So the
classical models see at least what the network sees, but are not refitted per window (refitting
ARIMA on each of ETTh1's 2,785 test windows and 7 targets would take hours on 2 cores).

- ETS: additive error and damped additive trend, plus an additive season when the frequency has
  one and the fitted rows hold at least two (statsmodels' state-space ExponentialSmoothing,
  initial states from the window itself).
- ARIMA: (p, 1, q) with drift, the order of (1,1,0), (0,1,1), (1,1,1), (2,1,2) with the lowest
  AIC on the fitted rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

FIT_ROWS = 3000  # the latest train + validation rows a classical model is fitted on
CONTEXT = 500  # rows before a window's origin that a fitted model is run over
ARIMA_ORDERS = ((1, 1, 0), (0, 1, 1), (1, 1, 1), (2, 1, 2))
METHODS = ("ets", "arima")


def fit_ets(history: np.ndarray, season: int | None) -> Any:
    from statsmodels.tsa.statespace.exponential_smoothing import ExponentialSmoothing

    seasonal = season if season and season > 1 and len(history) >= 2 * season else None
    model = ExponentialSmoothing(
        history,
        trend=True,
        damped_trend=True,
        seasonal=seasonal,
        initialization_method="heuristic" if seasonal else "simple",
    )
    return model.fit(disp=False)


def fit_arima(history: np.ndarray, season: int | None) -> Any:
    from statsmodels.tsa.arima.model import ARIMA

    fits = [ARIMA(history, order=order, trend="t").fit() for order in ARIMA_ORDERS]
    return min(fits, key=lambda r: r.aic)


FITTERS: dict[str, Callable[[np.ndarray, int | None], Any]] = {"ets": fit_ets, "arima": fit_arima}


def describe(method: str, result: Any) -> str:
    if method == "arima":
        return f"ARIMA{result.model.order} with drift"
    seasonal = getattr(result.model, "seasonal_periods", None)
    return f"ETS(A,Ad,A) season {seasonal}" if seasonal else "ETS(A,Ad,N)"


def forecast_window(
    result: Any, context: np.ndarray, horizon: int, levels: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """A fitted model run over `context` [C] with its parameters fixed -> mean [H], and
    Gaussian quantiles [H, Q] at `levels`."""
    from scipy.stats import norm

    applied = result.apply(context)
    prediction = applied.get_forecast(horizon)
    mean = np.asarray(prediction.predicted_mean, dtype=np.float64)  # [H]
    se = np.asarray(prediction.se_mean, dtype=np.float64)  # [H]
    z = norm.ppf(np.asarray(levels))  # [Q]
    return mean, mean[:, None] + se[:, None] * z  # [H], [H, Q]


def classical_forecasts(
    method: str,
    past: np.ndarray,
    fit_rows: tuple[int, int],
    origins: np.ndarray,
    input_len: int,
    horizon: int,
    levels: tuple[float, ...],
    season: int | None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """past [N, F_out] standardised targets; fit_rows: the rows of one series to fit on (its
    first row to its last validation row); origins [W] (first forecast rows of that series'
    windows) -> forecast [W, H, F_out], quantiles [W, H, F_out, Q], and the fitted model of
    each target."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels warns about convergence on most fits
        start, stop = max(fit_rows[0], fit_rows[1] - FIT_ROWS), fit_rows[1]
        forecast = np.empty((len(origins), horizon, past.shape[1]))
        quantiles = np.empty((len(origins), horizon, past.shape[1], len(levels)))
        names = []
        for f in range(past.shape[1]):
            result = FITTERS[method](past[start:stop, f].astype(np.float64), season)
            names.append(describe(method, result))
            for w, origin in enumerate(origins):
                first = max(fit_rows[0], origin - max(CONTEXT, input_len))  # its own rows
                context = past[first:origin, f]
                mean, q = forecast_window(result, context.astype(np.float64), horizon, levels)
                forecast[w, :, f], quantiles[w, :, f] = mean, q
        return forecast, quantiles, names
