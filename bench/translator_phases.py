"""Where the in-process translators spend their time: seqserve against CTranslate2, fp32 and
int8, split into the encoder and the decoding loop (issue 30, item 4's profile).

    python -m bench.translator_phases --checkpoint runs/m30k --repository REPO \
        [--model translator] [--int8-model translator_int8] [--batches 8,32] \
        [--sentences 64] [--repeats 5] [--out FILE.json]

Every engine translates the same sentences (the first N German sentences of Multi30k
test_2016_flickr) in consecutive groups of `batch`, greedy, one thread, twice: with
max_length 1 (the encoder and one decoder step) and with the benchmark's usual limit (3 x the
longest source + 10, within the model's limit). The first pass is the "encoder" phase; the
difference is the decoding loop. Passes take turns engine by engine within each repeat;
medians over repeats. seqserve runs each model's latest version.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.ctranslate2_convert import convert
from bench.translator import load_sentences
from bench.translator_engines import CTranslate2Engine, Engine, SeqserveEngine, load_torch
from core.translation.spec import TranslatorSpec
from serving.repository import read_config


def _pass(engine: Engine, sources: list[list[int]], batch: int, max_length: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(sources), batch):
        engine.translate(sources[i : i + batch], 1, max_length)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default="translator")
    parser.add_argument("--int8-model", default="translator_int8")
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    def _latest(name: str) -> int:  # the version the server would serve by default
        return max(int(p.name) for p in (args.repository / name).iterdir() if p.name.isdigit())

    _, tokenizer = load_torch(args.checkpoint)
    sentences = load_sentences("multi30k:test_2016_flickr", args.sentences, args.checkpoint)
    sources = [tokenizer.encode_source(s) for s in sentences]
    spec = TranslatorSpec.from_config(read_config(args.repository / args.model))
    max_length = min(spec.max_target_tokens, 3 * max(len(s) for s in sources) + 10)
    with tempfile.TemporaryDirectory() as tmp:
        ct2_dir = convert(args.checkpoint, Path(tmp) / "ct2")
        engines: list[Engine] = [
            SeqserveEngine("seqserve", args.repository / args.model, _latest(args.model)),
            SeqserveEngine(
                "seqserve_int8", args.repository / args.int8_model, _latest(args.int8_model)
            ),
            CTranslate2Engine("ct2_fp32", ct2_dir, "float32", tokenizer),
            CTranslate2Engine("ct2_int8", ct2_dir, "int8", tokenizer),
        ]
        batches = [int(b) for b in args.batches.split(",")]
        times: dict[str, list[float]] = {}
        for engine in engines:  # warm-up
            _pass(engine, sources[: max(batches)], max(batches), max_length)
        for _ in range(args.repeats):
            for batch in batches:
                for engine in engines:
                    for phase, length in (("encoder", 1), ("all", max_length)):
                        key = f"{engine.name} b{batch} {phase}"
                        times.setdefault(key, []).append(_pass(engine, sources, batch, length))
    result: dict = {
        "settings": {k: str(v) for k, v in vars(args).items()} | {"max_length": max_length},
        "load_avg": list(os.getloadavg()),
        "ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
    }
    print(f"{len(sources)} sentences, greedy, max_length {max_length}, medians of {args.repeats}")
    print("| batch | engine | encoder + 1 step ms | decoding loop ms | all ms |")
    print("|---|---|---|---|---|")
    ms = result["ms"]
    for batch in batches:
        for engine in engines:
            enc, total = ms[f"{engine.name} b{batch} encoder"], ms[f"{engine.name} b{batch} all"]
            print(f"| {batch} | {engine.name} | {enc:.0f} | {total - enc:.0f} | {total:.0f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
