"""Write examples/stock/stock.csv: a SYNTHETIC daily stock series in the shape of the lecture's
example (a price, the market index it moves with, and how often the news mentions it), on
business days that skip an exchange's holidays. The numbers are generated, not market data.

    .venv/bin/python examples/stock/make_data.py [--out FILE] [--start DATE] [--end DATE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# Weekdays the Korea Exchange was closed, 2021 to 2024: New Year, Lunar New Year, Independence
# Movement Day, Children's Day, Memorial Day, Liberation Day, Chuseok, Foundation Day, Hangul
# Day, Christmas, election days and the year-end closing; the `holidays` package's XKRX
# calendar for those years, written out so that the generator needs numpy alone.
HOLIDAYS = [
    "2021-01-01", "2021-02-11", "2021-02-12", "2021-03-01", "2021-05-05", "2021-05-19",
    "2021-08-16", "2021-09-20", "2021-09-21", "2021-09-22", "2021-10-04", "2021-10-11",
    "2021-12-31", "2022-01-31", "2022-02-01", "2022-02-02", "2022-03-01", "2022-03-09",
    "2022-05-05", "2022-06-01", "2022-06-06", "2022-08-15", "2022-09-09", "2022-09-12",
    "2022-10-03", "2022-10-10", "2022-12-30", "2023-01-23", "2023-01-24", "2023-03-01",
    "2023-05-01", "2023-05-05", "2023-05-29", "2023-06-06", "2023-08-15", "2023-09-28",
    "2023-09-29", "2023-10-02", "2023-10-03", "2023-10-09", "2023-12-25", "2023-12-29",
    "2024-01-01", "2024-02-09", "2024-02-12", "2024-03-01", "2024-04-10", "2024-05-01",
    "2024-05-06", "2024-05-15", "2024-06-06", "2024-08-15", "2024-09-16", "2024-09-17",
    "2024-09-18", "2024-10-01", "2024-10-03", "2024-10-09", "2024-12-25",
]  # fmt: skip


def generate(start: str, end: str, seed: int = 0) -> str:
    """The CSV text: date (a +09:00 date), price, kospi, news."""
    every = np.arange(np.datetime64(start), np.datetime64(end) + 1)
    days = every[np.is_busday(every, holidays=HOLIDAYS)]  # [N] trading days
    rng = np.random.default_rng(seed)
    n = len(days)
    market = 0.0003 + 0.011 * rng.standard_normal(n)  # the index's daily log return
    kospi = 2900 * np.exp(np.cumsum(market))
    buzz = np.convolve(rng.gamma(0.4, 6.0, n), np.ones(3) / 3, mode="same")  # news waves
    news = rng.poisson(4 + buzz)  # mentions a day
    # The stock follows the market (beta 1.2) and yesterday's news (more mentions, a small
    # push), with its own noise: what the lecture's model was meant to learn.
    push = 0.0015 * (np.concatenate([[0], news[:-1]]) - news.mean())
    price = 70000 * np.exp(np.cumsum(1.2 * market + push + 0.008 * rng.standard_normal(n)))
    lines = ["date,price,kospi,news"]
    lines += [
        f"{d}T00:00:00+09:00,{p:.0f},{k:.2f},{m}"
        for d, p, k, m in zip(days, price, kospi, news, strict=True)
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("stock.csv")))
    parser.add_argument("--start", default="2021-01-04")
    parser.add_argument("--end", default="2024-12-30")
    args = parser.parse_args()
    Path(args.out).write_text(generate(args.start, args.end))
    print(f"wrote {args.out} (synthetic)")


if __name__ == "__main__":
    main()
