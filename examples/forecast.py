"""Forecast with the typed API: the last window of a CSV to `forecaster_gru`.

.venv/bin/python examples/forecast.py [-u 127.0.0.1:8001] [--csv FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.client import Client
from serving.commands import read_series_csv

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("-u", "--url", default="127.0.0.1:8001", help="server host:port")
parser.add_argument("--model", default="forecaster_gru")
parser.add_argument("--csv", default=str(Path(__file__).with_name("forecast_input.csv")))
args = parser.parse_args()

stamps, series = read_series_csv(Path(args.csv))
with Client(args.url) as client:
    info = client.model_info(args.model)
    names = [*info.target_names, *info.covariate_names]
    window = slice(-info.input_window, None)
    forecast = client.forecast(
        args.model,
        {n: series[n][window] for n in names},
        timestamps=stamps[window],
        quantiles=[0.1, 0.9],
    )
target = info.target_names[0]
low, high = forecast.quantiles[target][0.1], forecast.quantiles[target][0.9]
print(f"{args.model} v{forecast.model_version}: {info.horizon} steps of {target}")
rows = zip(forecast.timestamps, forecast.point[target], low, high, strict=True)
for t, p, lo, hi in list(rows)[:6]:
    print(f"  {str(t)[:16]}  {p:9.3f}  [{lo:9.3f}, {hi:9.3f}]")
