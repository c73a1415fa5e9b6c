"""Export a translator checkpoint: encoder.onnx, decoder.onnx and spm.model in one version
folder, and a config.pbtxt for the `seqserve_translator` backend (a pipeline model: Triton
itself will not load it; seqserve's `core.translation` does).

Verification before anything is written:
- onnx.checker, and the dims of every graph input/output (dynamic where they must be);
- the decoder step against PyTorch on fresh inputs: several row counts, an empty cache, and
  rows whose caches are left-padded (as continuous batching makes them);
- greedy decoding through the two graphs (a plain cached loop on onnxruntime) gives exactly the
  tokens of PyTorch's uncached greedy decoding on the checkpoint's validation sentences.
With `--quantize int8` both graphs are quantised dynamically and the BLEU change on the
checkpoint's validation sample (greedy) is recorded in the config; where the native decoder
translator is built (core/native), its weights are written too (native.npz), its BLEU change
measured the same way, and the config lets serving choose it (`runtime: auto`).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import sacrebleu
import torch

from core.translation.graphs import (
    CacheArray,
    Layers,
    StepModel,
    decoder_feeds,
    decoder_inputs,
    decoder_outputs,
    layered_outputs,
)
from core.translation.native_model import FILE as NATIVE_FILE
from core.translation.native_model import NativeModel
from core.translation.native_model import kernel as native_kernel
from core.translation.search import OWN_RULES, SearchRules
from core.translation.tokenizer import Tokenizer
from core.translation.translator import AnyTokenizer
from export.errors import ExportError
from export.model_config import MAX_QUEUE_SIZE, SCHEMA_VERSION, parameter_value
from export.native_weights import write_native_weights
from export.quantize import METHOD, WEIGHT_TYPE, quantize_int8
from export.repository import write_version
from export.translator_graphs import ENCODER_OUTPUTS, export_graphs
from export.verify import check_dims, check_model, check_parity, session
from protos.inference import model_config_pb2 as mc
from training.decoding import greedy_decode
from training.models.transformer import EncoderDecoder
from training.train_translator import TOKENIZER_FILE, load_translator_checkpoint
from training.translator_config import TranslatorTrainConfig

BACKEND = "seqserve_translator"
# decoder rows per step (and V2's batch limit): 32 sentences at beam 4 decode together, as
# CTranslate2 decodes a batch of 32 (benchmarks.md, "The native translator")
MAX_BATCH_SIZE = 128
STEP_ATOL = 1e-4  # log-probabilities and cache values, fp32
PARITY_SENTENCES = 32  # validation sentences decoded greedily by both
STEP_CASES = ((1, 0, 3), (5, 0, 7), (4, 6, 9), (2, 13, 1))  # (rows, past, source length)


@dataclass(frozen=True)
class TranslatorExportOptions:
    version: int | None = None
    force: bool = False
    quantize: str | None = None  # None | "int8"
    opset: int | None = None
    max_batch_size: int = MAX_BATCH_SIZE


@dataclass(frozen=True)
class ServedAs:
    """What config.pbtxt tells the server besides the graphs' shapes: languages, limits,
    decoding defaults and the tokenizer's files (parameter -> file name in the version)."""

    src: str
    tgt: str
    max_source_tokens: int  # EOS included
    max_target_tokens: int  # EOS excluded
    beam_size: int
    length_penalty: float
    tokenizer_files: dict[str, str]
    source_normalization: str = "none"
    search: SearchRules = OWN_RULES

    @classmethod
    def trained(cls, model: EncoderDecoder, tc: TranslatorTrainConfig) -> ServedAs:
        """A seqserve-trained translator: one joint SentencePiece model."""
        return cls(
            tc.src,
            tc.tgt,
            tc.max_source_tokens,
            model.config.max_len - 1,
            tc.beam_size,
            tc.length_penalty,
            {"tokenizer": TOKENIZER_FILE},
            tc.source_normalization,
        )


def graph_dims(model: EncoderDecoder) -> dict[str, dict[str, list[int | None]]]:
    """Expected dims of both graphs; None = dynamic."""
    c = model.config
    kv = [c.num_decoder_layers, None, c.num_heads, None, c.head_dim]
    per_layer = [None, c.num_heads, None, c.head_dim]  # [R, H, P|S, K]
    layers = c.num_decoder_layers
    decoder: dict[str, list[int | None]] = {
        "tokens": [None, 1],
        "positions": [None, 1],
        "past_mask": [None, None],
        "src_mask": [None, None],
        "log_probs": [None, c.vocab_size],
    }
    decoder.update((name, per_layer) for name in decoder_inputs(layers)[4:])
    decoder.update((name, per_layer) for name in decoder_outputs(layers)[1:])
    return {
        "encoder.onnx": {
            "src_ids": [None, None],
            "src_mask": [None, None],
            "memory": [None, None, c.d_model],
            "cross_k": kv,
            "cross_v": kv,
        },
        "decoder.onnx": decoder,
    }


def step_inputs(
    model: EncoderDecoder, rows: int, past: int, src: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random decoder-step feeds (decoder.onnx's names) whose rows have different cache and
    source lengths."""
    c = model.config
    kv = (c.num_decoder_layers, rows, c.num_heads, past, c.head_dim)
    cross = (c.num_decoder_layers, rows, c.num_heads, src, c.head_dim)
    own = rng.integers(0, past + 1, rows)  # cache slots each row really has
    past_mask = np.arange(past)[None, :] >= (past - own)[:, None]  # [R, P], left-padded
    src_len = rng.integers(1, src + 1, rows)
    src_mask = np.arange(src)[None, :] < src_len[:, None]  # [R, S], right-padded
    return decoder_feeds(
        tokens=rng.integers(4, c.vocab_size, (rows, 1)).astype(np.int64),
        positions=own[:, None].astype(np.int64),
        past_k=rng.standard_normal(kv).astype(np.float32),
        past_v=rng.standard_normal(kv).astype(np.float32),
        past_mask=past_mask,
        cross_k=rng.standard_normal(cross).astype(np.float32),
        cross_v=rng.standard_normal(cross).astype(np.float32),
        src_mask=src_mask,
    )


def step_reference(model: EncoderDecoder):  # noqa: ANN201 - a callable for check_parity
    """PyTorch's decode_step on decoder.onnx's feeds, returning decoder.onnx's outputs."""
    layers = model.config.num_decoder_layers

    def stacked(feeds: dict[str, np.ndarray], name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([feeds[f"{name}_{i}"] for i in range(layers)]))

    @torch.no_grad()
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = {
            n: torch.from_numpy(feeds[n]) for n in ("tokens", "positions", "past_mask", "src_mask")
        }
        log_probs, k, v = model.decode_step(
            t["tokens"],
            t["positions"],
            stacked(feeds, "past_k"),
            stacked(feeds, "past_v"),
            t["past_mask"],
            stacked(feeds, "cross_k"),
            stacked(feeds, "cross_v"),
            t["src_mask"],
        )
        outputs = [log_probs, *k, *v]  # k/v [L, R, H, P+1, K] -> one [R, H, P+1, K] per layer
        return {n: o.numpy() for n, o in zip(decoder_outputs(layers), outputs, strict=True)}

    return run


class SessionSteps:
    """A version folder's two graphs on plain onnxruntime sessions, as a `StepModel` (export's
    own: export does not import serving)."""

    def __init__(self, encoder: ort.InferenceSession, decoder: ort.InferenceSession) -> None:
        self.encoder, self.decoder = encoder, decoder
        shapes = {i.name: i.shape for i in decoder.get_inputs()}
        self.num_layers = sum(name.startswith("past_k_") for name in shapes)
        _, self.num_heads, _, self.head_dim = shapes["past_k_0"]

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, cross_k, cross_v = self.encoder.run(
            ENCODER_OUTPUTS, {"src_ids": src_ids, "src_mask": src_mask}
        )
        return cross_k, cross_v  # [L, B, H, S, K] each

    def step(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        past_k: CacheArray,
        past_v: CacheArray,
        past_mask: np.ndarray,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        src_mask: np.ndarray,
    ) -> tuple[np.ndarray, Layers, Layers]:
        feeds = decoder_feeds(
            tokens, positions, past_k, past_v, past_mask, cross_k, cross_v, src_mask
        )
        outputs = self.decoder.run(decoder_outputs(self.num_layers), feeds)
        return layered_outputs(outputs, self.num_layers)


def step_greedy(
    model: StepModel, src: np.ndarray, pad_id: int, bos_id: int, eos_id: int, max_len: int
) -> list[list[int]]:
    """Plain batched greedy decoding with the key/value cache (independent of serving's search
    code). src [B, S] int64 -> tokens per row, EOS excluded."""
    src_mask = src != pad_id  # [B, S]
    cross_k, cross_v = model.encode(src, src_mask)
    rows = src.shape[0]
    empty = (model.num_layers, rows, model.num_heads, 0, model.head_dim)  # P = 0
    past_k: CacheArray = np.zeros(empty, np.float32)
    past_v: CacheArray = past_k
    tokens = np.full((rows, 1), bos_id, np.int64)  # [B, 1]
    out: list[list[int]] = [[] for _ in range(rows)]
    done = np.zeros(rows, bool)
    for t in range(max_len):
        log_probs, past_k, past_v = model.step(
            tokens,
            np.full((rows, 1), t, np.int64),
            past_k,
            past_v,
            np.ones((rows, t), bool),
            cross_k,
            cross_v,
            src_mask,
        )
        best = log_probs.argmax(axis=-1)  # [B]
        for i in np.flatnonzero(~done):
            if best[i] == eos_id:
                done[i] = True
            else:
                out[i].append(int(best[i]))
        if done.all():
            break
        tokens = best[:, None].astype(np.int64)
    return out


def encode_sources(
    tokenizer: AnyTokenizer, sentences: list[str], limit: int, pad_id: int
) -> np.ndarray:
    ids = [s for s in (tokenizer.encode_source(x) for x in sentences) if 0 < len(s) <= limit]
    if not ids:
        raise ExportError("the checkpoint has no validation sentences to verify greedy parity")
    src = np.full((len(ids), max(map(len, ids))), pad_id, np.int64)  # [B, S]
    for i, s in enumerate(ids):
        src[i, : len(s)] = s
    return src


def check_greedy(
    model: EncoderDecoder, folder: Path, src: np.ndarray, max_len: int
) -> dict[str, int]:
    """ONNX greedy == PyTorch greedy, token for token; returns sentence/token counts."""
    c = model.config
    want = greedy_decode(model, torch.from_numpy(src), max_len)
    got = step_greedy(
        SessionSteps(session(folder / "encoder.onnx"), session(folder / "decoder.onnx")),
        src,
        c.pad_id,
        c.bos_id,
        c.eos_id,
        max_len,
    )
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if w != g:
            raise ExportError(
                f"greedy decoding differs on validation sentence {i}: PyTorch "
                f"{w} vs onnxruntime {g}; nothing was written"
            )
    return {
        "sentences": len(want),
        "tokens": sum(map(len, want)),
        "longest_output_tokens": max(map(len, want)),
    }


def untie_initializers(src: Path, dst: Path) -> int:
    """Give each node its own copy of an initializer that several node types share (the tied
    embedding is a Gather table and the generator's Gemm weight). onnxruntime's dynamic
    quantisation rewrites the Gemm weight in place, which breaks the Gather. Returns the copies
    made."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in inits:
                users.setdefault(name, []).append((node, k))
    copies = 0
    for name, uses in users.items():
        if len({n.op_type for n, _ in uses}) < 2:
            continue
        first = uses[0][0].op_type
        for node, k in uses:
            if node.op_type == first:
                continue
            copy_name = f"{name}.{node.op_type.lower()}_{copies}"
            clone = onnx.TensorProto()
            clone.CopyFrom(inits[name])
            clone.name = copy_name
            model.graph.initializer.append(clone)
            node.input[k] = copy_name
            copies += 1
    onnx.save(model, str(dst))
    return copies


def check_length(src: np.ndarray, max_len: int) -> int:
    """Output cap of the export checks: serving's default for the longest source (3 * its
    tokens + 10), so that a weak model looping to max_len cannot make an export take minutes."""
    return min(max_len, 3 * src.shape[1] + 10)  # src [B, S], S = the longest source


def greedy_texts(
    model: StepModel,
    tokenizer: AnyTokenizer,
    sources: list[str],
    max_source_tokens: int,
    max_len: int,
) -> list[str]:
    """Greedy translations of `sources` (each must fit max_source_tokens) through `model`."""
    src = encode_sources(tokenizer, sources, max_source_tokens, tokenizer.pad_id)
    hyps = step_greedy(
        model,
        src,
        tokenizer.pad_id,
        tokenizer.bos_id,
        tokenizer.eos_id,
        check_length(src, max_len),
    )
    return [tokenizer.decode(h) for h in hyps]


def build_config(
    model: EncoderDecoder,
    served: ServedAs,
    metrics: dict[str, Any],
    opset: int,
    max_batch_size: int,
    verification: dict[str, Any],
    quantization: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> mc.ModelConfig:
    c = model.config
    config = mc.ModelConfig(backend=BACKEND, max_batch_size=max_batch_size)
    config.input.add(name="text", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="translation", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="score", data_type=mc.TYPE_FP32, dims=[1])
    # Sentences allowed to wait for decoder rows; past it RESOURCE_EXHAUSTED, at once.
    config.dynamic_batching.default_queue_policy.max_queue_size = MAX_QUEUE_SIZE
    # KIND_AUTO: the server's --device decides (KIND_CPU would pin the model to CPU).
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    config.version_policy.latest.num_versions = 1
    parameters: dict[str, object] = {
        "seqserve_schema": SCHEMA_VERSION,
        "task": "translator",
        "src_lang": served.src,
        "tgt_lang": served.tgt,
        "bos_id": c.bos_id,
        "eos_id": c.eos_id,
        "pad_id": c.pad_id,
        "max_source_tokens": served.max_source_tokens,
        "max_target_tokens": served.max_target_tokens,
        "default_beam_size": served.beam_size,
        "default_length_penalty": served.length_penalty,
        **served.tokenizer_files,
        "source_normalization": served.source_normalization,
        "vocab_size": c.vocab_size,
        "d_model": c.d_model,
        "num_layers": c.num_decoder_layers,
        "num_heads": c.num_heads,
        "head_dim": c.head_dim,
        "metrics": metrics,
        "exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}",
        "opset": opset,
        "verification": verification,
    }
    # the search's rules, each where it is not seqserve's own (older servers read those alone)
    for key, value in asdict(served.search).items():
        if value != getattr(OWN_RULES, key):
            parameters[key] = list(value) if isinstance(value, tuple) else value
    if quantization is not None:
        parameters["quantization"] = quantization
    parameters.update(extra or {})
    for key, value in parameters.items():
        config.parameters[key].string_value = parameter_value(value)
    return config


def export_translator(
    checkpoint_dir: Path,
    repository: Path,
    name: str,
    options: TranslatorExportOptions = TranslatorExportOptions(),
) -> Path:
    """Export, verify and write one version of a seqserve-trained checkpoint; returns the
    version folder."""
    check_free(repository, name, options)
    model, tc, spm_model, payload = load_translator_checkpoint(checkpoint_dir)
    tokenizer = Tokenizer.from_bytes(spm_model, tc.source_normalization)
    return write_translator(
        model,
        tokenizer,
        [list(p) for p in payload["data"].get("validation_sample", [])],
        ServedAs.trained(model, tc),
        payload.get("metrics", {}),
        {TOKENIZER_FILE: spm_model},
        repository,
        name,
        options,
    )


def check_free(repository: Path, name: str, options: TranslatorExportOptions) -> None:
    """Refuse, before any slow work, to overwrite a version without --force."""
    existing = Path(repository) / name / str(options.version)
    if options.version is not None and existing.exists() and not options.force:
        raise ExportError(
            f"{existing} exists: pass --force to overwrite version "
            f"{options.version}, or leave --version out to write the next one"
        )


def write_translator(
    model: EncoderDecoder,
    tokenizer: AnyTokenizer,
    sample: list[list[str]],
    served: ServedAs,
    metrics: dict[str, Any],
    tokenizer_files: dict[str, bytes | Path],
    repository: Path,
    name: str,
    options: TranslatorExportOptions,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Export `model`'s two graphs, verify them against it (module docstring) on `sample`
    ([source, reference] pairs), and write a version with the tokenizer's files."""
    for logger in ("torch.onnx", "onnx_ir", "onnxscript"):  # "torchvision is not installed",
        logging.getLogger(logger).setLevel(logging.ERROR)  # initializer de-duplication
    check_free(repository, name, options)
    c = model.config
    max_len = served.max_target_tokens
    with tempfile.TemporaryDirectory(prefix="seqserve-export-") as tmp:
        folder = Path(tmp)
        opset = export_graphs(model, folder, options.opset)
        dims = graph_dims(model)
        for file, want in dims.items():
            check_dims(check_model(folder / file), want)
        rng = np.random.default_rng(0)
        worst = check_parity(
            step_reference(model),
            session(folder / "decoder.onnx"),
            [step_inputs(model, *case, rng) for case in STEP_CASES],
            STEP_ATOL,
        )
        src = encode_sources(
            tokenizer, [s for s, _ in sample[:PARITY_SENTENCES]], served.max_source_tokens, c.pad_id
        )
        verification = {
            "step_max_abs_diff": float(f"{worst:.3g}"),
            "step_atol": STEP_ATOL,
            "greedy_equal": check_greedy(model, folder, src, check_length(src, max_len)),
        }
        files: dict[str, Path | bytes] = {
            "encoder.onnx": folder / "encoder.onnx",
            "decoder.onnx": folder / "decoder.onnx",
            **tokenizer_files,
        }
        quantization = None
        if options.quantize == "int8":
            counts = {}
            for file in ("encoder.onnx", "decoder.onnx"):
                untied = folder / file.replace(".onnx", ".untied.onnx")
                untie_initializers(folder / file, untied)
                q = folder / file.replace(".onnx", ".int8.onnx")
                counts[file] = quantize_int8(untied, q)
                check_dims(check_model(q), dims[file])
                files[file] = q
            limit = served.max_source_tokens
            fit = [p for p in sample if 0 < len(tokenizer.encode_source(p[0])) <= limit]
            sources = [s for s, _ in fit]
            graphs: dict[str, StepModel] = {
                kind: SessionSteps(session(folder / enc), session(folder / dec))
                for kind, (enc, dec) in {
                    "fp32": ("encoder.onnx", "decoder.onnx"),
                    "int8": ("encoder.int8.onnx", "decoder.int8.onnx"),
                }.items()
            }
            # the native int8 translator (core/native) where it is built: measured as served,
            # and shipped only if measured
            if native_kernel() is not None:
                weights = write_native_weights(model, folder)
                graphs["native"] = NativeModel(weights)
                files[NATIVE_FILE] = weights
            texts = {
                kind: greedy_texts(steps, tokenizer, sources, limit, max_len)
                for kind, steps in graphs.items()
            }
            # without references (an imported model), int8 is scored against fp32's output
            known = all(t for _, t in fit)
            refs = [t for _, t in fit] if known else texts["fp32"]
            bleu = {k: float(sacrebleu.corpus_bleu(v, [refs]).score) for k, v in texts.items()}
            quantization = {
                "type": "int8",
                "method": METHOD,
                "weight_type": WEIGHT_TYPE,
                "quantized_nodes": counts,
                "validation_sentences": len(fit),
                "references": "validation" if known else "fp32 translations",
                "greedy_bleu_fp32": round(bleu["fp32"], 2),
                "greedy_bleu_int8": round(bleu["int8"], 2),
                "bleu_change": round(bleu["int8"] - bleu["fp32"], 2),
            }
            if "native" in bleu:
                quantization["native"] = {
                    "file": NATIVE_FILE,
                    "method": "int8 weights per output column, uint8 inputs per row",
                    "checked_with_kernel": native_kernel(),
                    "greedy_bleu": round(bleu["native"], 2),
                    "bleu_change": round(bleu["native"] - bleu["fp32"], 2),
                }
                extra = {**(extra or {}), "runtime": "auto"}
        elif options.quantize is not None:
            raise ExportError(f"unknown quantisation {options.quantize!r} (known: int8)")
        config = build_config(
            model,
            served,
            metrics,
            opset,
            options.max_batch_size,
            verification,
            quantization,
            extra,
        )
        return write_version(repository, name, config, files, options.version, options.force)


def run_from_args(args: argparse.Namespace) -> Path:
    """The EXPORTERS entry of `seqserve export`."""
    options = TranslatorExportOptions(
        version=args.version, force=args.force, quantize=args.quantize, opset=args.opset
    )
    return export_translator(Path(args.checkpoint), Path(args.repository), args.name, options)
