"""`seqserve forecast` and `seqserve translate`: the client commands (no torch)."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np

from core.calendar import parse_timestamp, utc_timestamps
from serving.client import Client, Forecast

DATE_COLUMNS = ("date", "timestamp", "time", "datetime", "ds")


class CsvError(ValueError):
    """A CSV cell or column the forecast command cannot use."""


def read_series_csv(
    path: Path,
    date_col: str | None = None,
    last: int | None = None,
    fill: str = "none",
    names: Sequence[str] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A CSV with a timestamp column and numeric columns -> ([N] datetime64[ns], {name: [N]}).
    Only the `last` data rows are parsed (a model reads its last L values), so a bad cell in
    an older row does not matter. Rows are numbered as `seqserve train` numbers them: 1 = the
    first data row after the header. `fill="ffill"` carries the last value above an empty
    cell into it, looking above the rows kept when it must. `names`: only these columns are
    read (CsvError naming the first one missing)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise CsvError(f"{path}: needs a header and at least one row")
    header = [h.strip() for h in rows[0]]
    if date_col is None:
        date_col = next((h for h in header if h.lower() in DATE_COLUMNS), header[0])
    if date_col not in header:
        raise CsvError(f"{path}: no column {date_col!r} (columns: {', '.join(header)})")
    d = header.index(date_col)
    if names is not None and (absent := [n for n in names if n not in header]):
        raise CsvError(f"{path} lacks column {absent[0]!r} (columns: {', '.join(header)})")
    wanted = [h for i, h in enumerate(header) if i != d and (names is None or h in names)]
    body = [r for r in rows[1:] if r]
    first = max(0, len(body) - last) if last else 0
    stamps: list[datetime] = []
    columns: dict[str, list[float]] = {h: [] for h in wanted}
    for r, row in enumerate(body[first:], start=first + 1):
        if len(row) != len(header):
            raise CsvError(f"{path}: row {r} has {len(row)} cells, the header {len(header)}")
        try:
            stamps.append(parse_timestamp(row[d]))
        except ValueError:
            raise CsvError(
                f"{path}: row {r}, column {date_col!r}: {row[d]!r} is not a timestamp"
            ) from None
        for h in wanted:
            columns[h].append(_cell(path, body, r, header.index(h), h, fill))
    # the training reader's rule: offsets to UTC, dates kept on their day
    return utc_timestamps(stamps).astype("datetime64[ns]"), {
        k: np.asarray(v) for k, v in columns.items()
    }


def _cell(path: Path, body: list[list[str]], r: int, i: int, name: str, fill: str) -> float:
    """Data row r's (1-based) value in column i; an empty cell under --fill ffill takes the
    nearest value above it."""
    text = body[r - 1][i].strip()
    if text == "" and fill == "ffill":
        above = next((b[i].strip() for b in reversed(body[: r - 1]) if b[i].strip()), "")
        if above == "":
            raise CsvError(f"{path}: row {r}, column {name!r}: empty, with no value above it")
        text = above
    elif text == "":
        raise CsvError(
            f"{path}: row {r}, column {name!r}: missing value; pass --fill ffill to carry "
            "the previous value forward"
        )
    try:
        value = float(text)
    except ValueError:
        raise CsvError(f"{path}: row {r}, column {name!r}: {text!r} is not a number") from None
    if not np.isfinite(value):
        raise CsvError(f"{path}: row {r}, column {name!r}: {text!r} is not a finite number")
    return value


def run_forecast(args: argparse.Namespace) -> int:
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(
            "seqserve forecast: --plot needs matplotlib, which the serving-only install leaves "
            "out: pip install matplotlib (or seqserve[train])",
            file=sys.stderr,
        )
        return 2
    with Client(args.url, timeout=args.timeout) as client:
        try:
            info = client.model_info(args.model)
            wanted = [*info.target_names, *info.covariate_names]
            try:  # only the last L rows of the columns the model reads
                stamps, series = read_series_csv(
                    Path(args.csv), args.date_col, int(info.input_window), args.fill, wanted
                )
            except (OSError, CsvError) as err:
                print(
                    f"seqserve forecast: {err}; model {args.model!r} takes {', '.join(wanted)}",
                    file=sys.stderr,
                )
                return 2
            keep = -int(info.input_window) if len(stamps) > info.input_window else 0
            result = client.forecast(
                args.model, {n: series[n][keep:] for n in wanted}, timestamps=stamps[keep:]
            )
        except grpc.RpcError as err:
            print(f"seqserve forecast: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    if args.plot:
        plot_forecast(Path(args.plot), args.model, stamps[keep:], series, result)
        print(f"seqserve forecast: wrote {args.plot}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "version": result.model_version,
                    "timestamps": [str(t) for t in result.timestamps],
                    "forecast": result.point,
                    "quantiles": {
                        k: {str(q): v for q, v in qs.items()} for k, qs in result.quantiles.items()
                    },
                },
                indent=2,
            )
        )
        return 0
    columns = [(name, None) for name in result.point]
    for name, qs in result.quantiles.items():
        columns.extend((name, q) for q in sorted(qs))
    head = ["timestamp"] + [n if q is None else f"{n} q{q:g}" for n, q in columns]
    print("  ".join(f"{h:>19}" if i == 0 else f"{h:>12}" for i, h in enumerate(head)))
    for i, t in enumerate(result.timestamps or range(len(next(iter(result.point.values()))))):
        cells = [str(t)[:19]]
        for name, q in columns:
            value = result.point[name][i] if q is None else result.quantiles[name][q][i]
            cells.append(f"{value:12.4f}")
        print("  ".join([f"{cells[0]:>19}", *cells[1:]]))
    print(f"(model {args.model} version {result.model_version})", file=sys.stderr)
    return 0


def plot_forecast(
    path: Path, model: str, stamps: np.ndarray, series: dict[str, np.ndarray], result: Forecast
) -> None:
    """The history the model read, its forecast and the band between its outer quantiles, one
    panel per target."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    names = list(result.point)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 3 * len(names)), squeeze=False)
    future = np.asarray(result.timestamps) if result.timestamps else None
    for ax, name in zip(axes[:, 0], names, strict=True):
        history = series[name][-len(stamps) :]
        ax.plot(stamps, history, color="black", label="history")
        x = future if future is not None else np.arange(len(result.point[name]))
        ax.plot(x, result.point[name], color="tab:blue", marker=".", label="forecast")
        levels = sorted(result.quantiles.get(name, {}))
        if len(levels) >= 2:
            low, high = result.quantiles[name][levels[0]], result.quantiles[name][levels[-1]]
            ax.fill_between(x, low, high, color="tab:blue", alpha=0.2,
                            label=f"q{levels[0]:g} to q{levels[-1]:g}")  # fmt: skip
        ax.set_title(f"{model}: {name}")
        ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_translate(args: argparse.Namespace) -> int:
    with Client(args.url, timeout=args.timeout) as client:
        try:
            if args.stream:
                for sentence in args.text:
                    for piece in client.translate_stream(sentence, args.model):
                        print(piece, end="", flush=True)
                    print()
                return 0
            for t in client.translate(args.text, args.model, beam_size=args.beam_size):
                print(t.text)
        except grpc.RpcError as err:
            print(f"seqserve translate: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0
