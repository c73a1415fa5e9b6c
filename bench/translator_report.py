"""Output of the translator benchmark: the table it prints, the PNG plot, the versions."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

ENGINES = (
    "served",
    "served_int8",
    "seqserve",
    "seqserve_int8",
    "seqserve_int8_graphs",
    "seqserve_int8_native",
    "pytorch_uncached",
    "pytorch_cached",
    "ct2_fp32",
    "ct2_int8",
    "ct2_int8_threads",
)


def versions() -> dict[str, str | None]:
    """Package versions of the project venv, and tritonclient's from its tool venv."""
    from bench.translator import TOOL_PYTHON

    out: dict[str, str | None] = {}
    for name in ("onnxruntime", "torch", "ctranslate2", "sentencepiece", "grpcio", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        run = subprocess.run(
            [
                str(TOOL_PYTHON),
                "-c",
                "import importlib.metadata as m; print(m.version('tritonclient'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out["tritonclient"] = run.stdout.strip() or None
    except OSError:
        out["tritonclient"] = None
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = None
    out["cpu"] = cpu
    return out


def _rows(result: dict) -> list[tuple[str, str, str, dict]]:
    rows = []
    for engine in ENGINES:
        for beam, cells in sorted(result["results"].get(engine, {}).items()):
            for setting, cell in sorted(cells.items(), key=lambda kv: int(kv[0][1:])):
                rows.append((engine, beam, setting, cell))
    return rows


def print_table(result: dict) -> None:
    agree = result["agreement"]["text_vs_seqserve_b1"]
    print(
        f"\n{'engine':20s} {'beam':>4s} {'set':>4s} {'tokens/s':>9s} {'spread':>15s} "
        f"{'sent/s':>7s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'same':>5s}"
    )
    for engine, beam, setting, c in _rows(result):
        lat, spread = c["latency_ms"], c["tokens_per_s_spread"]
        same = agree.get(engine, {}).get(beam, {}).get(setting)
        print(
            f"{engine:20s} {beam[4:]:>4s} {setting:>4s} {c['tokens_per_s']:9.0f} "
            f"{spread[0]:7.0f}-{spread[1]:<7.0f} {c['sentences_per_s']:7.1f} "
            f"{lat['p50']:8.1f} {lat['p90']:8.1f} {lat['p99']:8.1f} "
            f"{'' if same is None else f'{same:5.0%}'}"
        )
    print("('same': share of sentences whose text equals seqserve fp32 batch 1's, same beam)")
    print("\nratios (median of per-repeat ratios [min, max]):")
    goals = result["goals"]
    for name, r in result["ratios"].items():
        goal = goals.get(name)
        verdict = ""
        if goal:
            ok = (
                r["median"] >= goal["goal"]
                if goal["comparison"] == ">="
                else r["median"] <= goal["goal"]
            )
            verdict = f"  goal {goal['comparison']} {goal['goal']:.2f}: {'met' if ok else 'MISSED'}"
        print(
            f"  {name:52s} {r['median']:7.2f} [{r['spread'][0]:.2f}, {r['spread'][1]:.2f}]{verdict}"
        )
    for name, t in result["agreement"]["greedy_tokens"].items():
        print(f"  greedy tokens {name}: {t['identical']}/{t['sentences']} sentences identical")


def plot(result: dict, path: Path) -> Path:
    """Grouped bars: tokens/s per engine at batch/concurrency 1 and 8, greedy and beam 4,
    with the repeat spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(result)
    panels = sorted({beam for _, beam, _, _ in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, beam in zip(axes[0], panels, strict=True):
        engines = [e for e in ENGINES if beam in result["results"].get(e, {})]
        for k, level in enumerate(("1", "8")):
            xs, ys, errs = [], [], []
            for j, engine in enumerate(engines):
                cells = result["results"][engine][beam]
                cell = cells.get(f"c{level}") or cells.get(f"b{level}")
                if cell is None:
                    continue
                lo, hi = cell["tokens_per_s_spread"]
                xs.append(j + (k - 0.5) * 0.4)
                ys.append(cell["tokens_per_s"])
                errs.append([cell["tokens_per_s"] - lo, hi - cell["tokens_per_s"]])
            ax.bar(
                xs,
                ys,
                width=0.4,
                label=f"batch / concurrency {level}",
                yerr=list(zip(*errs, strict=True)) if errs else None,
                capsize=3,
            )
        ax.set_xticks(range(len(engines)), engines, rotation=30, ha="right")
        ax.set_ylabel("target tokens/s")
        ax.set_title("greedy" if beam == "beam1" else f"beam {beam[4:]}")
        ax.legend()
    load = result["machine"]["load_avg"]
    fig.suptitle(
        f"translator, 1 thread per engine, {result['machine']['cpus']} CPUs, load "
        f"{load[0]:.1f} (served: concurrency; others: batch)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(result: dict) -> str:
    """The tables of docs/benchmarks.md's Translator section, from a result JSON."""
    agree = result["agreement"]["text_vs_seqserve_b1"]
    lines = [
        "| engine | beam | batch / clients | tokens/s (median) | spread | sentences/s "
        "| p50 ms | p90 ms | p99 ms | same text as seqserve b1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for engine, beam, setting, c in _rows(result):
        lat, (lo, hi) = c["latency_ms"], c["tokens_per_s_spread"]
        same = agree.get(engine, {}).get(beam, {}).get(setting)
        kind = "clients" if setting[0] == "c" else "batch"
        lines.append(
            f"| {engine} | {beam[4:]} | {kind} {setting[1:]} | {c['tokens_per_s']:.0f} "
            f"| {lo:.0f} to {hi:.0f} | {c['sentences_per_s']:.1f} | {lat['p50']:.1f} "
            f"| {lat['p90']:.1f} | {lat['p99']:.1f} | "
            f"{'' if same is None else f'{same:.0%}'} |"
        )
    lines += ["", "| ratio | median | spread | goal |", "|---|---|---|---|"]
    for name, r in result["ratios"].items():
        goal = result["goals"].get(name)
        text = ""
        if goal:
            ok = (
                r["median"] >= goal["goal"]
                if goal["comparison"] == ">="
                else r["median"] <= goal["goal"]
            )
            text = f"{goal['comparison']} {goal['goal']:.2f}: {'met' if ok else '**missed**'}"
        lo, hi = r["spread"]
        lines.append(f"| {name} | {r['median']:.2f} | {lo:.2f} to {hi:.2f} | {text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
