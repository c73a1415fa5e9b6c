"""An imported Marian model in seqserve against CTranslate2 on the same weights
(`seqserve bench translator --marian DIR|opus-size [--length 32] [--batches 1,8]`).

Real OPUS-MT weights cannot be downloaded here. `--marian opus-size` builds a Marian of
OPUS-MT's shape with random weights (6 + 6 layers, width 512, FFN 2048, 8 heads, swish, a
vocabulary of 58,101 whose first pieces come from SentencePiece models trained on generated
text), so speed is measured on the real sizes; a folder given instead is used as it is.

The same folder goes to both engines: `seqserve import marian` (fp32, and `--quantize int8`)
and CTranslate2's Transformers converter (float32, int8). Every engine decodes the same
sources to the same fixed length (`--length` tokens: EOS is suppressed in seqserve, and
CTranslate2 gets min_decoding_length = max_decoding_length), in process on one thread
(onnxruntime intra/inter 1; CTranslate2 intra_threads 1, inter_threads 1), greedy and beam 4,
at each `--batches` size. Repeats are interleaved, tokens/s are medians, and ratios are medians
of per-repeat ratios. Writes translator-marian-<time>.json to --results-dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.serving import machine

OPUS = {  # Helsinki-NLP/opus-mt-*: config.json
    "d_model": 512,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_ffn_dim": 2048,
    "decoder_ffn_dim": 2048,
    "max_position_embeddings": 512,
    "activation_function": "swish",
    "scale_embedding": True,
    "vocab_size": 58101,
}
WORDS = (
    "der die das ein eine Haus Hund Katze Mann Frau Kind läuft spielt sitzt schnell langsam "
    "über unter auf im Garten Straße Park Wasser rot blau grünen großen kleinen mit und"
).split()


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def marian_tokenizer(
    source: list[str], target: list[str], spm_vocab: tuple[int, int], size: int = 0
) -> tuple[bytes, bytes, dict[str, int]]:
    """Two SentencePiece models trained on `source` and `target` text (`spm_vocab` pieces at
    most), and one vocabulary numbering their pieces as Marian's does (</s> 0, <unk> 1, ...,
    <pad> last), filled up with made-up pieces to `size` entries when given."""
    import io

    import sentencepiece as spm

    blobs = []
    for sentences, pieces_at_most in zip((source, target), spm_vocab, strict=True):
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=pieces_at_most,
            model_type="unigram",
            hard_vocab_limit=False,
            character_coverage=1.0,
            minloglevel=2,
            num_threads=1,
        )
        blobs.append(model.getvalue())
    pieces: list[str] = []
    for blob in blobs:
        sp = spm.SentencePieceProcessor(model_proto=blob)
        for i in range(sp.get_piece_size()):
            p = sp.id_to_piece(i)
            if not (sp.is_control(i) or sp.is_unknown(i)) and p not in pieces:
                pieces.append(p)
    pieces += [f"\u2581w{i}" for i in range(size - 3 - len(pieces))]  # filler up to `size`
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)
    return blobs[0], blobs[1], vocab


def save_marian(
    folder: Path, model: Any, source: bytes, target: bytes, vocab: dict[str, int]
) -> Path:
    """A MarianMT folder as Hugging Face writes one: config, weights, generation config, two
    SentencePiece models and the shared vocabulary."""
    model.save_pretrained(folder)
    (folder / "source.spm").write_bytes(source)
    (folder / "target.spm").write_bytes(target)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return folder


def make_opus_size(folder: Path, seed: int = 0) -> Path:
    """A Marian folder of OPUS-MT's shape with random weights (transformers' init)."""
    import torch
    import transformers

    v = OPUS["vocab_size"]
    source, target, vocab = marian_tokenizer(
        _sentences(2000, seed), _sentences(2000, seed + 1), (200, 200), v
    )
    config = transformers.MarianConfig(
        **OPUS,
        pad_token_id=v - 1,
        decoder_start_token_id=v - 1,
        eos_token_id=0,
        forced_eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = transformers.MarianMTModel(config).eval()
    model.generation_config = transformers.GenerationConfig(
        num_beams=4, max_length=512, bad_words_ids=[[v - 1]], decoder_start_token_id=v - 1
    )
    return save_marian(folder, model, source, target, vocab)


class Seqserve:
    """The imported version in process, as the server decodes it; EOS suppressed so that
    every row decodes exactly the fixed length."""

    def __init__(self, name: str, version_dir: Path) -> None:
        import onnxruntime as ort

        from serving.models.onnx_step_model import load_translator

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.name = name
        self.translator = load_translator(version_dir, None, opts, ["CPUExecutionProvider"])
        spec = self.translator.spec
        rules = dataclasses.replace(
            spec.search, suppress_ids=(*spec.search.suppress_ids, spec.eos_id)
        )
        self.translator.spec = dataclasses.replace(spec, search=rules)

    def translate(self, sources: list[list[int]], beam: int, length: int) -> list[int]:
        from core.translation import DecodeRequest

        requests = [DecodeRequest(i, s, beam, length, 0.0) for i, s in enumerate(sources)]
        return [len(r.token_ids) for r in self.translator.run(requests)]


class CTranslate2:
    """CTranslate2 on one thread; sources as pieces, min = max decoding length."""

    def __init__(self, name: str, model_dir: Path, compute_type: str, tokenizer: Any) -> None:
        import ctranslate2

        self.name, self.tokenizer = name, tokenizer
        self.translator = ctranslate2.Translator(
            str(model_dir),
            device="cpu",
            compute_type=compute_type,
            inter_threads=1,
            intra_threads=1,
        )
        self.compute_type = self.translator.compute_type

    def translate(self, sources: list[list[int]], beam: int, length: int) -> list[int]:
        results = self.translator.translate_batch(
            [self.tokenizer.pieces(s) for s in sources],
            beam_size=beam,
            min_decoding_length=length,
            max_decoding_length=length,
            length_penalty=0.0,
        )
        return [len(r.hypotheses[0]) for r in results]


def run(args: argparse.Namespace) -> int:
    from ctranslate2.converters import TransformersConverter

    from core.translation import native_model
    from core.translation.vocab_tokenizer import VocabTokenizer
    from export.marian import FILES, import_marian
    from export.translator import TranslatorExportOptions

    batches = [int(b) for b in args.batches.split(",")]
    beams = [int(b) for b in args.beams.split(",")]
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-marian-") as tmp:
        work = Path(tmp)
        folder = (
            make_opus_size(work / "opus-size") if args.marian == "opus-size" else Path(args.marian)
        )
        repo = work / "repo"
        versions = {
            kind: import_marian(folder, repo, f"m_{kind}", TranslatorExportOptions(quantize=q))
            for kind, q in (("fp32", None), ("int8", "int8"))
        }
        ct2_dirs = {}
        for kind in ("float32", "int8"):
            ct2_dirs[kind] = Path(
                TransformersConverter(str(folder)).convert(
                    str(work / f"ct2_{kind}"), quantization=kind, force=True
                )
            )
        tokenizer = VocabTokenizer.from_files(*(folder / f for f in FILES))
        engines = [
            Seqserve("seqserve_fp32", versions["fp32"]),
            Seqserve("seqserve_int8", versions["int8"]),
            CTranslate2("ct2_fp32", ct2_dirs["float32"], "float32", tokenizer),
            CTranslate2("ct2_int8", ct2_dirs["int8"], "int8", tokenizer),
        ]
        sentences = _sentences(args.sentences, 7)
        sources = [tokenizer.encode_source(s) for s in sentences]
        samples: dict[str, list[float]] = {}
        lengths: dict[str, set[int]] = {}
        for _ in range(args.repeats):
            for beam in beams:
                for batch in batches:
                    for engine in engines:
                        key = f"{engine.name}_beam{beam}_b{batch}"
                        start, tokens = time.perf_counter(), 0
                        for i in range(0, len(sources), batch):
                            out = engine.translate(sources[i : i + batch], beam, args.length)
                            tokens += sum(out)
                            lengths.setdefault(key, set()).update(out)
                        samples.setdefault(key, []).append(tokens / (time.perf_counter() - start))
    tokens_per_s = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    ratios = {}
    for beam in beams:
        for batch in batches:
            for kind, ct2 in (("fp32", "ct2_fp32"), ("int8", "ct2_int8")):
                ours = samples[f"seqserve_{kind}_beam{beam}_b{batch}"]
                theirs = samples[f"{ct2}_beam{beam}_b{batch}"]
                per_repeat = [a / b for a, b in zip(ours, theirs, strict=True)]
                ratios[f"seqserve_{kind}_vs_{ct2}_beam{beam}_b{batch}"] = round(
                    statistics.median(per_repeat), 3
                )
    result = {
        "bench": "translator-marian",
        "model": args.marian,
        "shape": OPUS if args.marian == "opus-size" else "as given",
        "sentences": len(sentences),
        "length": args.length,
        "repeats": args.repeats,
        "threads": 1,
        "ct2_compute_types": {
            e.name: e.compute_type for e in engines if hasattr(e, "compute_type")
        },
        # what ran each import: onnxruntime's graphs or the native translator (and its kernel)
        "seqserve_runtimes": {
            e.name: native_model.runtime_of(e.translator.model)
            for e in engines
            if isinstance(e, Seqserve)
        },
        "decoded_lengths": {k: sorted(v) for k, v in lengths.items()},
        "tokens_per_second": tokens_per_s,
        "ratios": ratios,
        "machine": machine(),
    }
    out = Path(args.results_dir) / f"translator-marian-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in tokens_per_s.items():
        print(f"{k:36s} {v:10.1f} tokens/s")
    for k, v in ratios.items():
        print(f"{k:48s} {v:6.3f}x")
    print(f"wrote {out}")
    return 0
