"""The int8 decoder step's levers, measured side by side on one checkpoint (issue 30, item 4):

    python -m bench.decoder_levers --checkpoint runs/m30k [--rows 8,32] [--past 16] \
        [--source 18] [--calls 2000] [--shortlist-per-token 20] [--shortlist-frequent 100] \
        [--out FILE.json]

It writes every variant of the checkpoint's decoder step to a temporary folder and times them
with `bench.decoder_step.measure` (one onnxruntime thread, the files taking turns call by
call, medians):

- `int8`: what `seqserve export --quantize int8` ships (dynamic int8, one scale per matrix),
  the first file, so every speed-up is against it;
- `fp32`: the shipped fp32 step;
- `int8_per_channel`: dynamic int8 with one scale per output channel;
- `int8_reduce_range`: dynamic int8 with 7-bit weights (onnxruntime's advice for CPUs without
  VNNI, whose u8 x s8 instruction can saturate);
- `nbits8`, `nbits4`: weight-only `MatMulNBits` (blocks of 32, accuracy level 4: int8 compute);
- `fused_fp32`, `fused_int8`: the step written with onnxruntime's fused operators
  (`bench/fused_decoder.py`), then quantised like the shipped one;
- `shortlist_int8`: the shipped int8 step with its output projection cut to a vocabulary
  shortlist given as an input (`bench/shortlist.py`). Its vocab_ids at R rows are a real
  batch's: the union of R consecutive test sentences' lists (each source token's
  `--shortlist-per-token` likeliest target tokens in the training corpus, plus the
  `--shortlist-frequent` commonest), the batch of median size. The table gives that length C
  and the share of reference tokens outside their own sentence's list.

Each row of the table also gives the largest difference of the log-probabilities from fp32's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bench.decoder_step import _feeds, _session, _stacked_inputs, measure, restricted
from bench.fused_decoder import fused_decoder
from bench.shortlist import cooccurrence_shortlist, group_ids, shortlist_step, union_sizes
from core.translation.tokenizer import Tokenizer
from export.decoder_step import DecoderStep
from export.quantize import quantize_int8
from export.translator import untie_initializers
from export.translator_graphs import export_graphs
from training.data.parallel import load_corpus
from training.train_translator import load_translator_checkpoint


def _nbits(src: Path, dst: Path, bits: int) -> Path:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=32, is_symmetric=True, accuracy_level=4, bits=bits
    )
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst))
    return dst


def variants(checkpoint: Path, folder: Path) -> dict[str, str]:
    """name -> decoder file, `int8` first."""
    model = load_translator_checkpoint(checkpoint)[0]
    export_graphs(model, folder)
    fp32 = folder / "decoder.untied.onnx"  # what export quantises (a tied table copied)
    untie_initializers(folder / "decoder.onnx", fp32)
    fused = folder / "fused.onnx"
    onnx.save(fused_decoder(DecoderStep(model).eval()), str(fused))
    files = {"int8": folder / "int8.onnx"}
    quantize_int8(fp32, files["int8"])
    files["fp32"] = fp32
    for name, option in (
        ("int8_per_channel", "per_channel"),
        ("int8_reduce_range", "reduce_range"),
    ):
        files[name] = folder / f"{option}.onnx"
        quantize_int8(fp32, files[name], **{option: True})
    files["nbits8"] = _nbits(fp32, folder / "nbits8.onnx", 8)
    files["nbits4"] = _nbits(fp32, folder / "nbits4.onnx", 4)
    files["fused_fp32"] = fused
    files["fused_int8"] = folder / "fused_int8.onnx"
    quantize_int8(fused, files["fused_int8"])
    files["shortlist_int8"] = shortlist_step(model, folder)
    return {name: str(path) for name, path in files.items()}


def shortlists(
    checkpoint: Path, rows: list[int], per_token: int, frequent: int
) -> dict[int, dict[str, object]]:
    """rows -> the vocab_ids of a median-sized batch of that many test sentences, with the
    spread of batch lengths and the reference tokens missed (`bench.shortlist`)."""
    _, tc, spm_bytes, _ = load_translator_checkpoint(checkpoint)
    tokenizer = Tokenizer.from_bytes(spm_bytes, tc.source_normalization)
    corpus = load_corpus(tc.data, tc.src, tc.tgt, tc.seed, tc.test_split)
    lists = cooccurrence_shortlist(corpus["train"], tokenizer, per_token, frequent)
    out: dict[int, dict[str, object]] = {}
    for r in rows:
        sizes, missed = union_sizes(corpus["test"], tokenizer, lists, r)
        median = sorted(sizes)[len(sizes) // 2]
        first = sizes.index(median) * r
        batch = corpus["test"][first : first + r]
        ids = group_ids(lists, [tokenizer.encode(s) for s, _ in batch])
        out[r] = {
            "vocab_ids": ids,
            "length": len(ids),
            "lengths_min_max": [min(sizes), max(sizes)],
            "reference_tokens_missed": round(missed, 4),
        }
    return out


def fp32_differences(
    files: dict[str, str], rows: int, past: int, source: int, cut: dict[str, np.ndarray]
) -> dict[str, float]:
    """Largest |log-probability - fp32's| of every file on the measured inputs (a shortlisted
    file's against fp32's renormalised over its tokens)."""
    sessions = {name: _session(path) for name, path in files.items()}
    stacked = _stacked_inputs(sessions["fp32"], rows, past, source, np.random.default_rng(0))
    out = {
        n: s.run(["log_probs"], _feeds(s, stacked) | ({"vocab_ids": cut[n]} if n in cut else {}))[0]
        for n, s in sessions.items()
    }
    return {
        name: float(np.abs(lp - restricted(out["fp32"], cut.get(name))).max())
        for name, lp in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--rows", default="8,32")
    parser.add_argument("--past", type=int, default=16)
    parser.add_argument("--source", type=int, default=18)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--shortlist-per-token", type=int, default=20)
    parser.add_argument("--shortlist-frequent", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows_list = [int(r) for r in args.rows.split(",")]
    cuts = shortlists(args.checkpoint, rows_list, args.shortlist_per_token, args.shortlist_frequent)
    ort.set_default_logger_severity(3)
    result: dict = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "load_avg_start": list(os.getloadavg()),
        "rows": {},
    }
    print("| rows | variant | median ms | p10-p90 ms | speed-up vs int8 | max diff vs fp32 |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        files = variants(args.checkpoint, Path(tmp))
        for rows in rows_list:
            calls = max(200, args.calls * 8 // max(rows, 8))
            cut = {"shortlist_int8": cuts[rows]["vocab_ids"]}
            timed = measure(files, rows, args.past, args.source, calls, cut)
            for name, diff in fp32_differences(files, rows, args.past, args.source, cut).items():
                timed[name]["max_abs_diff_vs_fp32"] = diff
            result["rows"][rows] = timed
            result.setdefault("shortlist", {})[rows] = {
                k: v for k, v in cuts[rows].items() if k != "vocab_ids"
            }
            print(f"shortlist at {rows} rows: {result['shortlist'][rows]}")
            for name, m in timed.items():
                print(
                    f"| {rows} | {name} | {m['median_ms']:.3f} | {m['p10_ms']:.3f}-"
                    f"{m['p90_ms']:.3f} | {m['speedup_vs_first']:.2f} | "
                    f"{m['max_abs_diff_vs_fp32']:.1e} |"
                )
    result["load_avg_end"] = list(os.getloadavg())
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
