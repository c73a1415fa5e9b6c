"""The next five business days of the stock example, with the Python client
(`serving/client.py`): the last window of the CSV in, forecasts with quantiles out.

    .venv/bin/python examples/stock/forecast.py [-u 127.0.0.1:8001] [--model stock_gru]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.client import Client
from serving.commands import read_series_csv

parser = argparse.ArgumentParser()
parser.add_argument("-u", "--url", default="127.0.0.1:8001", help="server host:port")
parser.add_argument("--model", default="stock_gru")
parser.add_argument("--csv", default=str(Path(__file__).with_name("stock.csv")))
args = parser.parse_args()

with Client(args.url) as client:
    info = client.model_info(args.model)
    names = [*info.target_names, *info.covariate_names]
    stamps, series = read_series_csv(Path(args.csv), last=info.input_window, names=names)
    forecast = client.forecast(args.model, series, timestamps=stamps)

levels = sorted(forecast.quantiles["price"])
print(f"{args.model} v{forecast.model_version}: price, the next {info.horizon} business days")
for i, t in enumerate(forecast.timestamps):
    band = "  ".join(f"q{q:g} {forecast.quantiles['price'][q][i]:9.0f}" for q in levels)
    print(f"{str(t)[:10]}  {forecast.point['price'][i]:9.0f}  {band}")
