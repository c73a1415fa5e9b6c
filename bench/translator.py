"""Translator benchmark: the served translator against PyTorch eager and CTranslate2 on the same
weights and sentences, side by side in one run.

    seqserve bench translator --checkpoint runs/m30k-bench --repository /tmp/m30k-repo \
        [--model translator] [--int8-model translator_int8] [--sentences 64]

Engines (1 thread each; greedy and beam 4 where the engine has it):
- served: `seqserve serve` in a subprocess, the V2 model with BYTES input `text`, driven by a
  closed-loop tritonclient load generator (`bench/translator_load.py`, in the tool venv) at
  each concurrency; fp32, and int8 when `--int8-model` is in the repository;
- seqserve: `core.translation.Translator` in process (the server's decoding code and session
  options), batch 1 and 8, fp32 and int8 (as the server runs it: the native translator where
  the config's `runtime` chooses it, and then the int8 graphs beside it, `seqserve_int8_graphs`;
  where it chooses the graphs, the native translator beside them, `seqserve_int8_native`);
- pytorch_uncached / pytorch_cached: PyTorch eager on the checkpoint, greedy, batch 1 and 8;
- ct2_fp32 / ct2_int8: CTranslate2 on the checkpoint converted by `bench.ctranslate2_convert`.
Batch b decodes consecutive groups of b sentences; client i of c sends sentences i, i+c, ...,
so the 8 requests in flight are the sentences the batch-8 engines decode together; each served
window starts where the previous repeat's stopped, so short windows still cover every
sentence. Target tokens are counted the same way for every engine: SentencePiece pieces of
the output text. Repeats are interleaved (every engine once per repeat), medians over
repeats, [min, max] as spreads; ratios are medians of per-repeat ratios. Prints a table,
writes JSON and a PNG plot to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.serving import ROOT, _free_port, machine

if TYPE_CHECKING:
    from bench.translator_engines import Engine

TOOL_PYTHON = ROOT / ".tools" / "tritonclient" / "bin" / "python"
LOAD_SCRIPT = Path(__file__).with_name("translator_load.py")
# CTranslate2 int8 on the served translator's threads (its engine runs an encoder and a
# decoder session of one onnxruntime thread each, so 2), for the served comparison
SERVED_CT2, SERVED_THREADS = "ct2_int8_threads", 2
GOALS = {  # issue 6: name -> (comparison, goal)
    "served_c8_vs_pytorch_uncached_b8_tokens": (">=", 5.0),
    "served_c1_vs_pytorch_uncached_b1_latency": ("<=", 1 / 3),
    "served_c8_vs_ct2_fp32_b8_tokens": (">=", 0.75),
}


def load_sentences(source: str, n: int, checkpoint: Path) -> list[str]:
    """The first n sources of a Multi30k split (`multi30k:SPLIT`), or of the validation sample
    kept in the checkpoint (`validation`)."""
    if source == "validation":
        from training.train_translator import load_translator_checkpoint

        payload = load_translator_checkpoint(checkpoint)[3]
        sentences = [s for s, _ in payload["data"]["validation_sample"]]
    else:
        from training.data.parallel import multi30k

        kind, _, split = source.partition(":")
        assert kind == "multi30k", f"--source is validation or multi30k:SPLIT, not {source!r}"
        sentences = [s for s, _ in multi30k("de", "en", split or "test_2016_flickr")]
    return sentences[:n]


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


class Cell:
    """One engine at one beam size and batch size (or concurrency), over repeats."""

    def __init__(self) -> None:
        self.tokens_per_s: list[float] = []
        self.sentences_per_s: list[float] = []
        self.latencies: list[list[float]] = []  # seconds, per repeat
        self.texts: dict[int, str] = {}  # sentence -> last output text
        self.ids: dict[int, list[int]] = {}  # sentence -> last output ids, where known

    def add(
        self,
        seconds: float,
        done: list[tuple[int, float, str, list[int] | None]],
        count: Callable[[str], int],
    ) -> None:
        self.tokens_per_s.append(sum(count(t) for _, _, t, _ in done) / seconds)
        self.sentences_per_s.append(len(done) / seconds)
        self.latencies.append([lat for _, lat, _, _ in done])
        for i, _, text, ids in done:
            self.texts[i] = text
            if ids is not None:
                self.ids[i] = ids

    def summary(self) -> dict:
        def med(xs: list[float]) -> float:
            return statistics.median(xs) if xs else float("nan")

        pct = {
            q: [_percentile(lat, q) * 1e3 for lat in self.latencies if lat] for q in (50, 90, 99)
        }
        return {
            "tokens_per_s": med(self.tokens_per_s),
            "tokens_per_s_spread": [min(self.tokens_per_s), max(self.tokens_per_s)],
            "sentences_per_s": med(self.sentences_per_s),
            "latency_ms": {f"p{q}": med(v) for q, v in pct.items()},
            "p50_ms_spread": [min(pct[50]), max(pct[50])] if pct[50] else None,
            "repeats": len(self.tokens_per_s),
            "sentences_measured": sum(len(x) for x in self.latencies),
        }


def measure_pass(
    engine: Engine, sources: list[list[int]], beam: int, batch: int, max_length: int
) -> tuple[float, list]:
    """One pass over all sentences in consecutive groups of `batch`; every sentence's latency
    is its group's call time."""
    done, total = [], 0.0
    for start in range(0, len(sources), batch):
        group = sources[start : start + batch]
        t0 = time.perf_counter()
        outputs = engine.translate(group, beam, max_length)
        dt = time.perf_counter() - t0
        total += dt
        done += [(start + j, dt, o.text, o.ids) for j, o in enumerate(outputs)]
    return total, done


class Server:
    """`seqserve serve` over a scratch repository holding only the measured models."""

    def __init__(self, repository: Path, models: list[str], workdir: Path) -> None:
        from serving.probe import check

        repo = workdir / "repository"
        for name in models:
            shutil.copytree(repository / name, repo / name)
        self.target = f"127.0.0.1:{_free_port()}"
        self.log_path = workdir / "server.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "seqserve",
                "serve",
                "--model-repository",
                str(repo),
                "--http-port",
                "0",
                "--grpc-port",
                self.target.rsplit(":", 1)[1],
                "--metrics-port",
                str(_free_port()),
            ],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while check(self.target, timeout=0.5)[0] != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def load(self, spec: dict, workdir: Path) -> dict:
        path = workdir / "load.json"
        path.write_text(json.dumps({"target": self.target, **spec}))
        run = subprocess.run(
            [str(TOOL_PYTHON), str(LOAD_SCRIPT), str(path)],
            capture_output=True,
            text=True,
            timeout=spec["seconds"] * 3 + 120,
        )
        if run.returncode != 0:
            raise RuntimeError(f"load generator failed: {run.stderr[-2000:]}")
        return json.loads(run.stdout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _ratio(
    results: dict, a: tuple[str, str, str], b: tuple[str, str, str], key: str
) -> dict | None:
    """Per-repeat ratio a / b of `key` (tokens_per_s, or p50 latency); median and spread."""
    try:
        ca, cb = results[a[0]][a[1]][a[2]], results[b[0]][b[1]][b[2]]
    except KeyError:
        return None
    if key == "latency":
        xs = [_percentile(lat, 50) for lat in ca.latencies]
        ys = [_percentile(lat, 50) for lat in cb.latencies]
    else:
        xs, ys = ca.tokens_per_s, cb.tokens_per_s
    ratios = [x / y for x, y in zip(xs, ys, strict=False) if y > 0]
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "spread": [min(ratios), max(ratios)]}


def ratios(results: dict) -> dict:
    g, b4 = "beam1", "beam4"
    out: dict[str, dict | None] = {}
    for beam, suffix in ((g, ""), (b4, "_beam4")):  # greedy keeps the goals' original names
        for torch_engine, conc, batch, key in (
            ("pytorch_uncached", "c8", "b8", "tokens"),
            ("pytorch_uncached", "c1", "b1", "latency"),
            ("pytorch_cached", "c8", "b8", "tokens"),
        ):
            out[f"served_{conc}_vs_{torch_engine}_{batch}_{key}{suffix}"] = _ratio(
                results, ("served", beam, conc), (torch_engine, beam, batch), key
            )
    # every batch size against the same number of clients; the served engine also against
    # CTranslate2 on as many threads as it uses (ct2_int8_threads)
    sizes = {int(k[1:]) for beams in results.values() for ks in beams.values() for k in ks}
    for beam in (g, b4):
        for n in sorted(sizes):
            conc, batch = f"c{n}", f"b{n}"
            for kind, ct2 in (("", "ct2_fp32"), ("_int8", "ct2_int8"), ("_int8", SERVED_CT2)):
                out[f"served{kind}_{conc}_vs_{ct2}_{batch}_tokens_{beam}"] = _ratio(
                    results, (f"served{kind}", beam, conc), (ct2, beam, batch), "tokens"
                )
            for kind, ct2 in (
                ("", "ct2_fp32"),
                ("_int8", "ct2_int8"),
                ("_int8_graphs", "ct2_int8"),
                ("_int8_native", "ct2_int8"),
            ):
                out[f"seqserve{kind}_{batch}_vs_{ct2}_{batch}_tokens_{beam}"] = _ratio(
                    results, (f"seqserve{kind}", beam, batch), (ct2, beam, batch), "tokens"
                )
    # the goal's name (issue 6): there when the run had 8 clients and batch 8
    out["served_c8_vs_ct2_fp32_b8_tokens"] = out.get("served_c8_vs_ct2_fp32_b8_tokens_beam1")
    return {k: v for k, v in out.items() if v is not None}


def agreement(results: dict) -> dict:
    """Per cell: the share of sentences whose output text equals seqserve fp32 batch 1's (the
    reference, per beam), and token-for-token checks of the engines that return ids."""
    out: dict = {}
    for engine, beams in results.items():
        for beam, cells in beams.items():
            ref = results.get("seqserve", {}).get(beam, {}).get("b1")
            for label, cell in cells.items():
                if ref is None or not cell.texts:
                    continue
                common = [i for i in cell.texts if i in ref.texts]
                same = sum(cell.texts[i] == ref.texts[i] for i in common)
                out.setdefault(engine, {}).setdefault(beam, {})[label] = (
                    same / len(common) if common else None
                )
    pairs = {
        "ct2_fp32_vs_pytorch_uncached": ("ct2_fp32", "pytorch_uncached"),
        "seqserve_vs_pytorch_uncached": ("seqserve", "pytorch_uncached"),
        "pytorch_cached_vs_pytorch_uncached": ("pytorch_cached", "pytorch_uncached"),
    }
    found: dict[str, dict] = {"beam1": {}, "beam4": {}}
    for beam, tokens in found.items():
        for name, (a, b) in pairs.items():
            try:
                ia, ib = results[a][beam]["b1"].ids, results[b][beam]["b1"].ids
            except KeyError:
                continue
            common = sorted(set(ia) & set(ib))
            tokens[name] = {
                "sentences": len(common),
                "identical": sum(ia[i] == ib[i] for i in common),
                "tokens": sum(len(ib[i]) for i in common),
            }
    return {
        "text_vs_seqserve_b1": out,
        "greedy_tokens": found["beam1"],
        "beam4_tokens": found["beam4"],
    }


def run(args: argparse.Namespace) -> int:
    if args.marian:  # an imported Marian model against CTranslate2 on the same weights
        from bench.marian import run as run_marian

        return run_marian(args)
    from bench.translator_report import plot, print_table, versions

    repository, checkpoint = Path(args.repository), Path(args.checkpoint)
    if not (repository / args.model / "config.pbtxt").is_file():
        print(
            f"seqserve bench translator: no model {args.model!r} in {repository}", file=sys.stderr
        )
        return 2
    if not (checkpoint / "checkpoint.pt").is_file():
        print(f"seqserve bench translator: no checkpoint.pt in {checkpoint}", file=sys.stderr)
        return 2
    served = args.concurrency != "" and not args.no_served
    if served and not TOOL_PYTHON.exists():
        print(
            "seqserve bench translator: .tools/tritonclient is missing: run `make tools`",
            file=sys.stderr,
        )
        return 2
    int8 = bool(args.int8_model) and (repository / args.int8_model / "config.pbtxt").is_file()
    beams = [int(b) for b in args.beams.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")] if served else []

    from bench.translator_engines import (
        CTranslate2Engine,
        SeqserveEngine,
        TorchCached,
        TorchUncached,
        load_torch,
    )
    from core.translation import native_model
    from core.translation.native_model import NativeModel
    from core.translation.spec import TranslatorSpec
    from serving.repository import read_config, select_versions

    def version_of(name: str) -> int:
        versions_ = sorted(int(p.name) for p in (repository / name).iterdir() if p.name.isdigit())
        return select_versions(read_config(repository / name), versions_)[-1]

    model, tokenizer = load_torch(checkpoint)
    spec = TranslatorSpec.from_config(read_config(repository / args.model))
    sentences = load_sentences(args.source, args.sentences, checkpoint)
    sources = [tokenizer.encode_source(s) for s in sentences]
    too_long = [i for i, s in enumerate(sources) if len(s) > spec.max_source_tokens]
    assert not too_long, f"sentences {too_long} exceed max_source_tokens"
    max_length = args.max_length or min(
        spec.max_target_tokens, 3 * max(len(s) for s in sources) + 10
    )

    engines: list[Engine] = [
        SeqserveEngine("seqserve", repository / args.model, version_of(args.model))
    ]
    if int8:
        int8_dir, int8_version = repository / args.int8_model, version_of(args.int8_model)
        engines.append(SeqserveEngine("seqserve_int8", int8_dir, int8_version))
        if isinstance(engines[-1].translator.model, NativeModel):  # the int8 graphs beside it
            engines.append(
                SeqserveEngine("seqserve_int8_graphs", int8_dir, int8_version, runtime="onnx")
            )
        elif (
            native_model.kernel() is not None
            and (int8_dir / str(int8_version) / native_model.FILE).is_file()
        ):  # the native translator beside the graphs `auto` chose (a slower CPU)
            engines.append(
                SeqserveEngine("seqserve_int8_native", int8_dir, int8_version, runtime="native")
            )
    engines += [
        TorchUncached("pytorch_uncached", model, tokenizer),
        TorchCached("pytorch_cached", model, tokenizer),
    ]
    workdir = Path(tempfile.mkdtemp(prefix="seqserve-bench-translator-"))
    conversion = None
    try:
        import ctranslate2  # noqa: F401 - optional: the `bench` extra

        from bench.ctranslate2_convert import convert

        t0 = time.perf_counter()
        ct2_dir = Path(args.ct2_dir) if args.ct2_dir else convert(checkpoint, workdir / "ct2")
        conversion = {"seconds": time.perf_counter() - t0, "dir": str(ct2_dir)}
        engines += [
            CTranslate2Engine("ct2_fp32", ct2_dir, "float32", tokenizer),
            CTranslate2Engine("ct2_int8", ct2_dir, "int8", tokenizer),
        ]
        if served and int8:
            engines.append(
                CTranslate2Engine(SERVED_CT2, ct2_dir, "int8", tokenizer, SERVED_THREADS)
            )
    except ImportError:
        print("ctranslate2 is not installed (pip install 'seqserve[bench]'): skipping it")

    results: dict = {}
    server = None
    loads = [os.getloadavg()]  # at the start, then after every repeat
    cursor: dict[tuple[str, int, int], int] = {}  # served cell -> next first sentence
    print(
        f"{len(sentences)} sentences, max_length {max_length}, beams {beams}, "
        f"{args.repeats} repeats; load average {machine()['load_avg']}",
        flush=True,
    )
    try:
        if concurrencies:
            server = Server(repository, [args.model] + ([args.int8_model] if int8 else []), workdir)
        for e in engines:  # warm-up: one group per setting
            for beam in (b for b in beams if b in e.beams):
                for batch in batches:
                    e.translate(sources[:batch], beam, max_length)
        for rep in range(args.repeats):
            for name in (["served"] + (["served_int8"] if int8 else [])) if server else []:
                model_name = args.int8_model if name == "served_int8" else args.model
                for beam in beams:
                    for c in concurrencies:
                        start = cursor.get((name, beam, c), 0)
                        out = server.load(
                            {
                                "model": model_name,
                                "sentences": sentences,
                                "concurrency": c,
                                "seconds": args.seconds,
                                "windows": 1,
                                "start": start,
                                "warmup_seconds": args.warmup_seconds,
                                # length penalty 0 as every in-process engine: the
                                # model's own default (alpha from training) would change
                                # the search the served figures are compared on
                                "parameters": {
                                    "beam_size": beam,
                                    "max_length": max_length,
                                    "length_penalty": 0.0,
                                },
                            },
                            workdir,
                        )
                        if out["error_count"]:
                            raise RuntimeError(f"{name} c{c}: {out['errors']}")
                        (window,) = out["windows"]
                        # the next window goes on where this one stopped (rounded to a group)
                        sent = len(window["requests"]) + c
                        cursor[(name, beam, c)] = (start + sent - sent % c) % len(sentences)
                        done = [(i, lat, text, None) for i, lat, text in window["requests"]]
                        cell = results.setdefault(name, {}).setdefault(f"beam{beam}", {})
                        cell.setdefault(f"c{c}", Cell()).add(
                            window["seconds"], done, lambda t: len(tokenizer.encode(t))
                        )
            for e in engines:
                for beam in (b for b in beams if b in e.beams):
                    for batch in batches:
                        seconds, done = measure_pass(e, sources, beam, batch, max_length)
                        cell = results.setdefault(e.name, {}).setdefault(f"beam{beam}", {})
                        cell.setdefault(f"b{batch}", Cell()).add(
                            seconds, done, lambda t: len(tokenizer.encode(t))
                        )
            loads.append(os.getloadavg())
            print(f"  repeat {rep + 1}/{args.repeats} done; load average {loads[-1]}", flush=True)
    finally:
        if server:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {
        e: {b: {k: c.summary() for k, c in cells.items()} for b, cells in beams_.items()}
        for e, beams_ in results.items()
    }
    result = {
        "suite": "translator",
        "machine": machine() | {"versions": versions(), "load_avg_per_repeat": loads},
        "settings": vars(args)
        | {
            "handler": None,
            "max_length": max_length,
            "length_penalty": 0.0,
            "threads_per_session": 1,
            "token_count": "SentencePiece pieces of the output text",
            "int8_served": int8,
        },
        "model": {
            "d_model": model.config.d_model,
            "layers": [model.config.num_encoder_layers, model.config.num_decoder_layers],
            "vocab": model.config.vocab_size,
        },
        "engines": {e.name: e.info for e in engines},
        "conversion": conversion,
        "results": summary,
        "ratios": ratios(results),
        "goals": {k: {"comparison": op, "goal": v} for k, (op, v) in GOALS.items()},
        "agreement": agreement(results),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print_table(result)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.results_dir) / f"translator-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
    if not args.no_plot:
        print(f"wrote {plot(result, out.with_suffix('.png'))}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default="runs/m30k-bench",
        help="translator checkpoint folder (PyTorch and CTranslate2 weights)",
    )
    parser.add_argument("--repository", default="model_repository", help="model repository")
    parser.add_argument("--model", default="translator", help="fp32 translator in it")
    parser.add_argument(
        "--int8-model",
        default="translator_int8",
        help="int8 export of the same checkpoint ('' or missing: skipped)",
    )
    parser.add_argument("--ct2-dir", help="converted CTranslate2 model (default: convert now)")
    parser.add_argument(
        "--source",
        default="multi30k:test_2016_flickr",
        help="sentences: multi30k:SPLIT (German side) or validation (the "
        "checkpoint's validation sample)",
    )
    parser.add_argument("--sentences", type=int, default=64, help="the first N sentences")
    parser.add_argument("--beams", default="1,4", help="beam sizes (1 = greedy)")
    parser.add_argument("--batches", default="1,8", help="in-process batch sizes")
    parser.add_argument("--concurrency", default="1,8", help="served concurrencies")
    parser.add_argument(
        "--max-length",
        type=int,
        default=0,
        help="target tokens (default: 3 x longest source + 10, capped)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--seconds", type=float, default=10.0, help="served window per repeat")
    parser.add_argument(
        "--warmup-seconds", type=float, default=1.0, help="served warm-up before each window"
    )
    parser.add_argument(
        "--marian",
        metavar="DIR|opus-size",
        help="instead: a MarianMT folder (or opus-size: a random one of OPUS-MT's shape) "
        "imported by seqserve against CTranslate2's conversion of it, fp32 and int8, in process "
        "on one thread, every sentence decoded to --length tokens (bench/marian.py)",
    )
    parser.add_argument(
        "--length", type=int, default=32, help="--marian: target tokens every engine decodes"
    )
    parser.add_argument("--no-served", action="store_true", help="in-process engines only")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--results-dir", default=str(ROOT / "bench" / "results"), help="where the JSON and PNG go"
    )
