"""`seqserve import marian DIR`: a Hugging Face MarianMT folder (OPUS-MT) as a seqserve
translator, served by the same engine as a trained one (cached, continuously batched; greedy,
beam, streaming, V2 BYTES and the typed API).

The folder holds `config.json`, the weights (`model.safetensors` or `pytorch_model.bin`),
`source.spm`, `target.spm` and `vocab.json`, and usually `generation_config.json`. Marian's
layout maps onto seqserve's network (`TranslatorConfig`): post-norm layers without a final
norm, its activation (swish for OPUS-MT), token embeddings scaled by sqrt(D) and shared by
encoder, decoder and output projection, `final_logits_bias` as the projection's bias, and
sinusoidal positions with every sin before every cos. The decoder starts from the pad token,
and pad is never generated (`suppress_ids`). Hugging Face's beam search divides by
length ** length_penalty and stops by its `early_stopping` rule (`length_penalty_form`
"length", `early_stopping`).

Checks before anything is written: the network's logits equal Hugging Face's on random
sources and targets, and then the export's own checks (`export/translator.py`) on the
validation sentences given (or a few built from the vocabulary). `--check SENTENCES` then
decodes them through the written version with onnxruntime and compares the tokens with
`generate()`, greedy and beam: the parity the issue asks for, on a user's own model.
`transformers` is needed here only (the train extra); serving needs neither it nor torch.
The command and its `--check` are `seqserve/marian_import.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.translation.search import SearchRules
from core.translation.vocab_tokenizer import VocabTokenizer
from export.errors import ExportError
from export.translator import ServedAs, TranslatorExportOptions, write_translator
from training.models.transformer import EncoderDecoder, make_model
from training.translator_config import TranslatorConfig

FILES = ("source.spm", "target.spm", "vocab.json")
ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu"}
LOGIT_ATOL = 1e-3  # fp32 logits of the same network computed two ways


@dataclass(frozen=True)
class Marian:
    """A loaded Marian folder: Hugging Face's model and generation settings, our network with
    its weights, and the tokenizer."""

    hf: Any  # transformers.MarianMTModel, eval mode
    model: EncoderDecoder
    tokenizer: VocabTokenizer
    num_beams: int
    length_penalty: float
    max_length: int
    early_stopping: bool | str  # transformers': False, True or "never"
    suppress_ids: tuple[int, ...]


def _transformers() -> Any:
    try:
        import transformers
    except ModuleNotFoundError:
        raise ExportError(
            "seqserve import marian needs transformers: pip install -e '.[train]'"
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def shares_embeddings(hf: Any) -> bool:
    """Encoder, decoder and output projection on one matrix (OPUS-MT's)."""
    m = hf.model
    weights = (m.encoder.embed_tokens.weight, m.decoder.embed_tokens.weight, hf.lm_head.weight)
    return len({w.data_ptr() for w in weights}) == 1


def network_config(hf_config: Any, tied: bool) -> TranslatorConfig:
    """Marian's config.json as a TranslatorConfig; ExportError naming what does not map."""
    c = hf_config

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ExportError(f"config.json: {what}; seqserve cannot import this model")

    need(c.model_type == "marian", f"model_type is {c.model_type!r}, not 'marian'")
    need(
        c.encoder_attention_heads == c.decoder_attention_heads,
        "encoder and decoder have different head counts",
    )
    need(c.encoder_ffn_dim == c.decoder_ffn_dim, "encoder and decoder FFN widths differ")
    need(
        c.activation_function in ACTIVATIONS,
        f"activation {c.activation_function!r} is not one of {', '.join(ACTIVATIONS)}",
    )
    need(
        (c.decoder_vocab_size or c.vocab_size) == c.vocab_size,
        "separate source and target vocabularies",
    )
    need(c.d_model % 2 == 0, "d_model is odd")
    return TranslatorConfig(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        num_heads=c.encoder_attention_heads,
        d_ff=c.encoder_ffn_dim,
        num_encoder_layers=c.encoder_layers,
        num_decoder_layers=c.decoder_layers,
        dropout=0.0,
        max_len=c.max_position_embeddings,
        tie_embeddings=tied,  # one matrix in the graphs when Marian has one
        pad_id=c.pad_token_id,
        bos_id=c.decoder_start_token_id,
        eos_id=c.eos_token_id,
        norm="post",
        activation=ACTIVATIONS[c.activation_function],
        position_layout="halves",
        scale_embedding=bool(c.scale_embedding),
    )


def _copy(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def load_weights(model: EncoderDecoder, hf: Any) -> None:
    """Hugging Face's Marian weights into our network (same shapes, other names)."""
    m = hf.model
    with torch.no_grad():
        model.src_embed.lut.weight.copy_(m.encoder.embed_tokens.weight)
        model.tgt_embed.lut.weight.copy_(m.decoder.embed_tokens.weight)
        model.generator.proj.weight.copy_(hf.lm_head.weight)
        model.generator.proj.bias.copy_(hf.final_logits_bias[0])
    for side in (m.encoder, m.decoder):  # Marian's are fixed sinusoids: ours must equal them
        table = side.embed_positions.weight  # [max_len, D]
        if not torch.allclose(model.position.pe[: len(table)], table, atol=1e-5):
            raise ExportError("the positional embeddings are not Marian's sinusoids")
    for ours, theirs in zip(model.encoder.layers, m.encoder.layers, strict=True):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _copy(getattr(ours.self_attn, name), getattr(theirs.self_attn, name))
        _copy(ours.sublayer[0].norm, theirs.self_attn_layer_norm)
        _copy(ours.feed_forward.w_1, theirs.fc1)
        _copy(ours.feed_forward.w_2, theirs.fc2)
        _copy(ours.sublayer[1].norm, theirs.final_layer_norm)
    for ours, theirs in zip(model.decoder.layers, m.decoder.layers, strict=True):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _copy(getattr(ours.self_attn, name), getattr(theirs.self_attn, name))
            _copy(getattr(ours.src_attn, name), getattr(theirs.encoder_attn, name))
        _copy(ours.sublayer[0].norm, theirs.self_attn_layer_norm)
        _copy(ours.sublayer[1].norm, theirs.encoder_attn_layer_norm)
        _copy(ours.feed_forward.w_1, theirs.fc1)
        _copy(ours.feed_forward.w_2, theirs.fc2)
        _copy(ours.sublayer[2].norm, theirs.final_layer_norm)


@torch.no_grad()
def check_logits(model: EncoderDecoder, hf: Any, seed: int = 0) -> float:
    """Largest |difference| of the two networks' logits on random sources and targets (padded
    rows included); ExportError past LOGIT_ATOL."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    low = min(c.pad_id, c.eos_id) + 1  # no specials inside the random ids
    src = torch.randint(low, c.vocab_size - 1, (3, 7), generator=g)  # [B, S]
    src[1, 5:] = c.pad_id  # a shorter source
    tgt = torch.randint(low, c.vocab_size - 1, (3, 6), generator=g)  # [B, T]
    tgt[:, 0] = c.bos_id
    ours = model.logits(src, tgt)  # [B, T, V]
    theirs = hf(
        input_ids=src, attention_mask=(src != c.pad_id).long(), decoder_input_ids=tgt
    ).logits  # [B, T, V]
    worst = float((ours - theirs).abs().max())
    if not worst <= LOGIT_ATOL:
        raise ExportError(
            f"the imported network's logits differ from transformers' by {worst:.3g} "
            f"(> {LOGIT_ATOL}); nothing was written"
        )
    return worst


def load(folder: Path) -> Marian:
    """Read and convert a Marian folder; ExportError when it is not one seqserve can serve."""
    folder = Path(folder)
    missing = [f for f in ("config.json", *FILES) if not (folder / f).is_file()]
    if missing:
        raise ExportError(f"{folder}: not a MarianMT folder, missing {', '.join(missing)}")
    if (folder / "target_vocab.json").exists():
        raise ExportError(f"{folder}: separate source and target vocabularies are not supported")
    transformers = _transformers()
    hf = transformers.MarianMTModel.from_pretrained(str(folder)).eval()
    model = make_model(network_config(hf.config, shares_embeddings(hf))).eval()
    load_weights(model, hf)
    try:
        tokenizer = VocabTokenizer.from_files(*(folder / f for f in FILES))
    except ValueError as err:
        raise ExportError(f"{folder}: {err}") from None
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ExportError(
            f"vocab.json has ids up to {tokenizer.vocab_size - 1}, the model "
            f"{model.config.vocab_size} embeddings"
        )
    special = (tokenizer.pad_id, tokenizer.eos_id)
    if special != (model.config.pad_id, model.config.eos_id):
        raise ExportError(f"vocab.json's pad/eos ids {special} differ from config.json's")
    if model.config.bos_id != model.config.pad_id:
        raise ExportError(
            f"config.json: decoder_start_token_id {model.config.bos_id} is not pad "
            f"({model.config.pad_id}); a Marian decoder starts from pad"
        )
    gen = hf.generation_config
    if gen.early_stopping not in (None, False, True, "never"):
        raise ExportError(f"generation_config.json: early_stopping {gen.early_stopping!r}")
    bad = tuple(ids[0] for ids in (gen.bad_words_ids or []) if len(ids) == 1)
    return Marian(
        hf,
        model,
        tokenizer,
        int(gen.num_beams or 1),
        float(gen.length_penalty if gen.length_penalty is not None else 1.0),
        int(gen.max_length or model.config.max_len),
        False if gen.early_stopping is None else gen.early_stopping,  # None: transformers' False
        tuple(sorted({model.config.pad_id, *bad})),
    )


def served_as(marian: Marian, src: str, tgt: str) -> ServedAs:
    c = marian.model.config
    return ServedAs(
        src,
        tgt,
        max_source_tokens=min(512, c.max_len),  # MarianTokenizer's model_max_length
        # Hugging Face's max_length counts the start token and a forced EOS
        max_target_tokens=min(c.max_len - 1, marian.max_length - 2),
        beam_size=marian.num_beams,
        length_penalty=marian.length_penalty,
        tokenizer_files={
            "tokenizer": "source.spm",
            "target_tokenizer": "target.spm",
            "vocab": "vocab.json",
        },
        source_normalization="none",  # Marian's text is cased: never folded
        search=SearchRules(
            length_penalty_form="length",
            early_stopping=str(marian.early_stopping).lower(),  # False, True or "never"
            suppress_ids=marian.suppress_ids,
        ),
    )


def sample_sentences(tokenizer: VocabTokenizer, n: int = 8) -> list[list[str]]:
    """Sources for the export's own checks when none are given: runs of vocabulary pieces
    (any text exercises the graphs; the references are unused by an fp32 export)."""
    pieces = [p for p in tokenizer.vocab if not p.startswith("<") and not p.startswith(">>")]
    out = []
    for i in range(n):
        text = "".join(pieces[(i * 7 + j * 13) % len(pieces)] for j in range(3 + i % 5))
        out.append([text.replace("\u2581", " ").strip() or "a", ""])
    return out


def import_marian(
    folder: Path,
    repository: Path,
    name: str,
    options: TranslatorExportOptions,
    src: str = "",
    tgt: str = "",
    sentences: list[str] | None = None,
) -> Path:
    """Convert, verify and write one version; returns the version folder."""
    marian = load(folder)
    logits = check_logits(marian.model, marian.hf)
    sample = [[s, ""] for s in sentences] if sentences else sample_sentences(marian.tokenizer)
    info = {
        "source": "huggingface marian",
        "logits_max_abs_diff": float(f"{logits:.3g}"),
        "hf_num_beams": marian.num_beams,
        "hf_length_penalty": marian.length_penalty,
        "hf_early_stopping": marian.early_stopping,
        "hf_max_length": marian.max_length,
    }
    return write_translator(
        marian.model,
        marian.tokenizer,
        sample,
        served_as(marian, src, tgt),
        {},
        {f: Path(folder) / f for f in FILES},
        repository,
        name,
        options,
        extra={"imported": info},
    )
