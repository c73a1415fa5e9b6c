"""`seqserve import marian DIR [--check SENTENCES]`: the import (`export/marian.py`), then the
parity check through the written version as the server loads it (which is why this lives in
the CLI layer: export does not import serving)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from export.errors import ExportError
from export.marian import import_marian, load
from export.translator import TranslatorExportOptions
from serving.models.onnx_step_model import load_translator

EARLY: dict[str, bool | str] = {"false": False, "true": True, "never": "never"}


def check_parity(
    folder: Path, version_dir: Path, sentences: list[str], beams: tuple[int, ...] = (1, 4)
) -> dict[str, Any]:
    """Tokens of `generate()` (transformers, PyTorch) against the written version's (seqserve's
    search on onnxruntime), sentence by sentence, for each beam size, with the same
    max_length. Returns counts and the first differences."""
    marian = load(folder)
    served = load_translator(version_dir, providers=["CPUExecutionProvider"])
    tokenizer = served.tokenizer
    report: dict[str, Any] = {}
    pad, eos = marian.model.config.pad_id, marian.model.config.eos_id
    for beam in beams:
        equal, total, differ = 0, 0, []
        for text in sentences:
            source = tokenizer.encode_source(text)
            if not source:
                continue
            cap = min(served.spec.max_target_tokens, 3 * len(source) + 10)
            ids = torch.tensor([source])
            with torch.no_grad():
                out = marian.hf.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    num_beams=beam,
                    max_length=cap + 2,  # the start token and a forced EOS
                    do_sample=False,
                    bad_words_ids=[[pad]],  # as OPUS-MT's generation configs say
                    early_stopping=EARLY[served.spec.search.early_stopping],  # what was imported
                    length_penalty=served.spec.default_length_penalty,
                )
            want = out[0].tolist()[1:]  # [start, tokens..., EOS]
            if want and want[-1] == eos:
                want = want[:-1]
            [result] = served.translate([text], beam_size=beam, max_length=cap)
            got = result.hypotheses[0].token_ids
            total += 1
            if got == want:
                equal += 1
            elif len(differ) < 3:
                differ.append({"source": text, "transformers": want, "seqserve": got})
        report[f"beam_{beam}"] = {"equal": equal, "sentences": total, "differ": differ}
    return report


def run(args: argparse.Namespace) -> int:
    options = TranslatorExportOptions(
        version=args.version, force=args.force, quantize=args.quantize
    )
    sentences = None
    if args.check:
        sentences = [
            line.strip()
            for line in Path(args.check).read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    try:
        version_dir = import_marian(
            Path(args.folder),
            Path(args.repository),
            args.name,
            options,
            args.src,
            args.tgt,
            sentences,
        )
    except ExportError as err:
        print(f"seqserve import marian: {err}", file=sys.stderr)
        return 2
    print(f"wrote {version_dir} and {version_dir.parent / 'config.pbtxt'}")
    if sentences:
        report = check_parity(Path(args.folder), version_dir, sentences)
        print(json.dumps(report, indent=2, ensure_ascii=False))
        if any(r["equal"] != r["sentences"] for r in report.values()):
            print("seqserve import marian: outputs differ from transformers'", file=sys.stderr)
            return 1
    return 0
