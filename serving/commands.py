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


Columns = tuple[np.ndarray, dict[str, np.ndarray]]  # [N] datetime64[ns], {name: [N]}


def _header(
    path: Path, date_col: str | None, names: Sequence[str] | None
) -> tuple[list[str], list[list[str]], int]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise CsvError(f"{path}: needs a header and at least one row")
    header = [h.strip() for h in rows[0]]
    if date_col is None:
        date_col = next((h for h in header if h.lower() in DATE_COLUMNS), header[0])
    if date_col not in header:
        raise CsvError(f"{path}: no column {date_col!r} (columns: {', '.join(header)})")
    if names is not None and (absent := [n for n in names if n not in header]):
        raise CsvError(f"{path} lacks column {absent[0]!r} (columns: {', '.join(header)})")
    return header, rows[1:], header.index(date_col)


def read_series_csv(
    path: Path,
    date_col: str | None = None,
    last: int | None = None,
    fill: str = "none",
    names: Sequence[str] | None = None,
) -> Columns:
    """A CSV with a timestamp column and numeric columns -> ([N] datetime64[ns], {name: [N]}).
    Only the `last` data rows are parsed (a model reads its last L values), so a bad cell in
    an older row does not matter. Rows are numbered as `seqserve train` numbers them: 1 = the
    first data row after the header. `fill="ffill"` carries the last value above an empty
    cell into it, looking above the rows kept when it must. `names`: only these columns are
    read (CsvError naming the first one missing)."""
    header, rows, d = _header(path, date_col, names)
    numbered = [(r, row) for r, row in enumerate(rows, start=1) if row]
    return _parse(path, header, numbered, d, last, fill, names, skip=None)


def read_long_series_csv(
    path: Path,
    id_col: str,
    date_col: str | None = None,
    last: int | None = None,
    fill: str = "none",
    names: Sequence[str] | None = None,
) -> dict[str, Columns]:
    """A long-format CSV (a series id column, StatsForecast's `unique_id`; many series in one
    file) -> series id -> its columns, as `read_series_csv` reads one series: the last `last`
    rows of each, `--fill` within each series, rows numbered in the file."""
    header, rows, d = _header(path, date_col, names)
    if id_col not in header:
        raise CsvError(f"{path}: no series id column {id_col!r} (columns: {', '.join(header)})")
    i = header.index(id_col)
    groups: dict[str, list[tuple[int, list[str]]]] = {}
    for r, row in enumerate(rows, start=1):
        if row:
            if len(row) != len(header):
                raise CsvError(f"{path}: row {r} has {len(row)} cells, the header {len(header)}")
            groups.setdefault(row[i].strip(), []).append((r, row))
    return {key: _parse(path, header, group, d, last, fill, names, skip=i)
            for key, group in groups.items()}  # fmt: skip


def _parse(
    path: Path,
    header: list[str],
    numbered: list[tuple[int, list[str]]],
    d: int,
    last: int | None,
    fill: str,
    names: Sequence[str] | None,
    skip: int | None,
) -> Columns:
    """The last `last` of `numbered` (row number, cells) rows of one series."""
    wanted = [
        h for k, h in enumerate(header) if k not in (d, skip) and (names is None or h in names)
    ]
    first = max(0, len(numbered) - last) if last else 0
    stamps: list[datetime] = []
    columns: dict[str, list[float]] = {h: [] for h in wanted}
    for k in range(first, len(numbered)):
        r, row = numbered[k]
        if len(row) != len(header):
            raise CsvError(f"{path}: row {r} has {len(row)} cells, the header {len(header)}")
        try:
            stamps.append(parse_timestamp(row[d]))
        except ValueError:
            raise CsvError(
                f"{path}: row {r}, column {header[d]!r}: {row[d]!r} is not a timestamp"
            ) from None
        for h in wanted:
            columns[h].append(_cell(path, numbered, k, header.index(h), h, fill))
    # the training reader's rule: offsets to UTC, dates kept on their day
    return utc_timestamps(stamps).astype("datetime64[ns]"), {
        k: np.asarray(v) for k, v in columns.items()
    }


def _cell(
    path: Path, numbered: list[tuple[int, list[str]]], k: int, i: int, name: str, fill: str
) -> float:
    """The value in column i of the k-th of a series' (row number, cells) rows; an empty cell
    under --fill ffill takes the nearest value above it in the same series."""
    r, row = numbered[k]
    text = row[i].strip()
    if text == "" and fill == "ffill":
        above = (cells[i].strip() for _, cells in reversed(numbered[:k]))
        text = next((t for t in above if t), "")
        if text == "":
            raise CsvError(f"{path}: row {r}, column {name!r}: empty, with no value above it")
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


WINDOWS_PER_REQUEST = 256  # a long-format file's series go to the server in requests of this many


def long_format_id(path: Path, id_col: str | None) -> str | None:
    """The series id column: `--id-col`, else `unique_id` when the header has one."""
    if id_col:
        return id_col
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    return "unique_id" if "unique_id" in header else None


def run_forecast(args: argparse.Namespace) -> int:
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(
            "seqserve forecast: --plot needs matplotlib, which the serving-only install leaves "
            "out: pip install matplotlib (or seqserve[train])",
            file=sys.stderr,
        )
        return 2
    path = Path(args.csv)
    with Client(args.url, timeout=args.timeout) as client:
        try:
            info = client.model_info(args.model)
            wanted = [*info.target_names, *info.covariate_names]
            window = int(info.input_window)
            try:  # only the last L rows of each series, of the columns the model reads
                id_col = long_format_id(path, args.id_col)
                if id_col:
                    found = read_long_series_csv(
                        path, id_col, args.date_col, window, args.fill, wanted
                    )
                    if args.id is not None:
                        if args.id not in found:
                            raise CsvError(f"{path}: no series {args.id!r} in column {id_col!r}")
                        found = {args.id: found[args.id]}
                else:
                    if args.id is not None:
                        raise CsvError(f"{path}: --id needs a series id column (--id-col)")
                    found = {"": read_series_csv(path, args.date_col, window, args.fill, wanted)}
            except (OSError, CsvError) as err:
                print(
                    f"seqserve forecast: {err}; model {args.model!r} takes {', '.join(wanted)}",
                    file=sys.stderr,
                )
                return 2
            short = [k for k, (stamps, _) in found.items() if len(stamps) < window]
            if id_col and short and len(short) < len(found):  # the others can still be served
                print(
                    f"seqserve forecast: {len(short)} series have fewer than the {window} rows "
                    f"the model reads, left out (first: {short[0]!r})",
                    file=sys.stderr,
                )
                found = {k: v for k, v in found.items() if k not in short}
            if args.plot and len(found) > 1:
                print("seqserve forecast: --plot draws one series: name it with --id",
                      file=sys.stderr)  # fmt: skip
                return 2
            # one window per series, many windows a request
            keys = list(found)
            windows = [
                client.window({n: found[k][1][n] for n in wanted}, timestamps=found[k][0])
                for k in keys
            ]
            results: list[Forecast] = []
            for i in range(0, len(windows), WINDOWS_PER_REQUEST):
                chunk = windows[i : i + WINDOWS_PER_REQUEST]
                results += client.forecast_windows(args.model, chunk, timeout=args.timeout)
        except grpc.RpcError as err:
            print(f"seqserve forecast: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    if args.plot:
        stamps, series = found[keys[0]]
        plot_forecast(Path(args.plot), args.model, stamps, series, results[0])
        print(f"seqserve forecast: wrote {args.plot}", file=sys.stderr)
    if args.json:
        records = [
            {
                **({"unique_id": key} if id_col else {}),
                "model": args.model,
                "version": result.model_version,
                "timestamps": [str(t) for t in result.timestamps],
                "forecast": result.point,
                "quantiles": {
                    k: {str(q): v for q, v in qs.items()} for k, qs in result.quantiles.items()
                },
            }
            for key, result in zip(keys, results, strict=True)
        ]
        print(json.dumps(records if id_col else records[0], indent=2))
        return 0
    print_table(keys if id_col else None, results)
    print(f"(model {args.model} version {results[0].model_version})", file=sys.stderr)
    return 0


def print_table(keys: list[str] | None, results: list[Forecast]) -> None:
    """One line a forecast step: the series id (long format), the timestamp, the point
    forecast and each quantile of every target."""
    first = results[0]
    columns = [(name, None) for name in first.point]
    for name, qs in first.quantiles.items():
        columns.extend((name, q) for q in sorted(qs))
    head = ["timestamp"] + [n if q is None else f"{n} q{q:g}" for n, q in columns]
    width = max([len("unique_id"), *map(len, keys)]) if keys else 0
    line = "  ".join(f"{h:>19}" if i == 0 else f"{h:>12}" for i, h in enumerate(head))
    print(f"{'unique_id':<{width}}  {line}" if keys else line)
    for n, result in enumerate(results):
        steps = result.timestamps or range(len(next(iter(result.point.values()))))
        for i, t in enumerate(steps):
            cells = [f"{str(t)[:19]:>19}"]
            for name, q in columns:
                value = result.point[name][i] if q is None else result.quantiles[name][q][i]
                cells.append(f"{value:12.4f}")
            text = "  ".join(cells)
            print(f"{keys[n]:<{width}}  {text}" if keys else text)


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
