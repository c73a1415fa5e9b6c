"""What a translator's `config.pbtxt` tells the pipeline: special ids, limits, cache geometry.

The exporter writes these as string `parameters` (JSON for anything that is not a plain
string); `TranslatorSpec.from_config` reads them back and refuses a config that lacks one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from core.translation.normalization import NORMALIZATIONS
from core.translation.search import EARLY_STOPPING, LENGTH_PENALTY_FORMS, OWN_RULES, SearchRules
from protos.inference import model_config_pb2 as mc

BACKEND = "seqserve_translator"
SCHEMA = "1"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
# What runs the model (`core.translation.native_model`): the graphs on onnxruntime; the native
# int8 translator where it is fast here (AMX or AVX-512 VNNI), else the graphs; or the native
# translator always. int8 exports write "auto" when they ship native.npz.
RUNTIMES = ("onnx", "auto", "native")


class SpecError(ValueError):
    """The config is not a loadable seqserve translator config."""


@dataclass(frozen=True)
class TranslatorSpec:
    """The translator's contract with its graphs and tokenizer."""

    src_lang: str
    tgt_lang: str
    bos_id: int
    eos_id: int
    pad_id: int
    max_source_tokens: int  # EOS included
    max_target_tokens: int  # EOS excluded
    default_beam_size: int
    tokenizer: str  # file name in the version folder
    num_layers: int
    num_heads: int
    head_dim: int
    max_batch_size: int = 0
    default_length_penalty: float = 0.0  # GNMT alpha chosen at training; older exports: none
    source_normalization: str = "none"  # normalization.py; older exports: none
    # An imported Marian model (export/marian.py): `tokenizer` is the source SentencePiece
    # model, plus these two files (vocab_tokenizer.py). Empty: one joint `tokenizer`.
    target_tokenizer: str = ""
    vocab: str = ""
    search: SearchRules = OWN_RULES  # an imported model's length penalty, stop, ids
    runtime: str = "onnx"  # RUNTIMES; older exports: onnx

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> TranslatorSpec:
        params = {k: v.string_value for k, v in config.parameters.items()}
        if config.backend != BACKEND:
            raise SpecError(f"backend is {config.backend!r}, not {BACKEND!r}")
        if params.get("seqserve_schema") != SCHEMA:
            raise SpecError(
                f"parameter seqserve_schema is {params.get('seqserve_schema')!r}; "
                f"this server reads schema {SCHEMA}"
            )

        def get(key: str) -> str:
            if key not in params:
                raise SpecError(f"config.pbtxt lacks parameter {key!r}")
            return params[key]

        def number(key: str) -> int:
            try:
                return int(json.loads(get(key)))
            except (ValueError, TypeError) as err:
                raise SpecError(f"parameter {key!r} is not an integer: {get(key)!r}") from err

        try:
            alpha = float(json.loads(params.get("default_length_penalty", "0")))
        except (ValueError, TypeError) as err:
            raise SpecError(
                "parameter 'default_length_penalty' is not a number: "
                f"{params['default_length_penalty']!r}"
            ) from err

        def choice(key: str, known: Sequence[str]) -> str:  # older exports: the first
            value = params.get(key, known[0])
            if value not in known:
                raise SpecError(
                    f"parameter {key!r} is {value!r}, not one of {', '.join(map(repr, known))}"
                )
            return value

        normalization = choice("source_normalization", tuple(NORMALIZATIONS))
        form = choice("length_penalty_form", LENGTH_PENALTY_FORMS)
        early = choice("early_stopping", EARLY_STOPPING)
        runtime = choice("runtime", RUNTIMES)
        try:
            suppress = tuple(int(i) for i in json.loads(params.get("suppress_ids", "[]")))
        except (ValueError, TypeError) as err:
            raise SpecError(
                f"parameter 'suppress_ids' is not a list of ids: {params['suppress_ids']!r}"
            ) from err
        vocab_size = number("vocab_size") if "vocab_size" in params else 0
        if any(not 0 <= i < (vocab_size or i + 1) for i in suppress):
            raise SpecError(f"parameter 'suppress_ids' {list(suppress)} is outside the vocabulary")
        marian = {key: params.get(key, "") for key in ("target_tokenizer", "vocab")}
        if bool(marian["target_tokenizer"]) != bool(marian["vocab"]):
            raise SpecError("parameters 'target_tokenizer' and 'vocab' come together")
        return cls(
            src_lang=get("src_lang"),
            tgt_lang=get("tgt_lang"),
            bos_id=number("bos_id"),
            eos_id=number("eos_id"),
            pad_id=number("pad_id"),
            max_source_tokens=number("max_source_tokens"),
            max_target_tokens=number("max_target_tokens"),
            default_beam_size=number("default_beam_size"),
            tokenizer=get("tokenizer"),
            num_layers=number("num_layers"),
            num_heads=number("num_heads"),
            head_dim=number("head_dim"),
            max_batch_size=config.max_batch_size,
            default_length_penalty=alpha,
            source_normalization=normalization,
            target_tokenizer=marian["target_tokenizer"],
            vocab=marian["vocab"],
            search=SearchRules(form, early, suppress),
            runtime=runtime,
        )


def read_config(model_dir: Path) -> mc.ModelConfig:
    """`<model_dir>/config.pbtxt` as a ModelConfig."""
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
