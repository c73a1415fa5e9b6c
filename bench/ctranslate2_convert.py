"""Convert a seqserve translator checkpoint to a CTranslate2 model, through CTranslate2's own
`TransformerSpec` API (no framework converter fits our checkpoint), and check it.

    python -m bench.ctranslate2_convert --checkpoint runs/m30k-bench --out /tmp/m30k-ct2 \
        [--quantization int8] [--check 32]

How our model maps onto the spec (each property checked against CTranslate2 4.8.5's specs):
- pre-norm residual blocks with a final LayerNorm on encoder and decoder: `pre_norm=True`,
  `no_final_norm=False`; PyTorch's LayerNorm epsilon (1e-5) goes into the config;
- ReLU feed-forward: `Activation.RELU`;
- embeddings scaled by sqrt(D): the spec's `scale_embeddings` (on by default);
- sinusoidal positions: our table interleaves sin and cos (even/odd channels), which is not the
  layout CTranslate2 generates by itself, so the exact table goes into
  `position_encodings.encodings` (positions 0..max_len-1, as our model indexes them);
- one matrix for source, target embeddings and the output projection: the same array is
  assigned to the three variables; CTranslate2 stores it once (it aliases equal variables).
  The output projection keeps its own bias;
- separate q/k/v projections: fused into CTranslate2's [q; k; v] (self-attention) and
  [k; v] (encoder-decoder attention) linear layers;
- SentencePiece pieces are the vocabulary (ids unchanged), source sequences end with EOS (we pass
  it in the tokens), decoding starts from BOS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ctranslate2.specs import TransformerSpec

    from training.models.transformer import EncoderDecoder

LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which the model uses


def _array(t: Any) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def _linear(spec: Any, layers: list[Any]) -> None:
    """Set a CTranslate2 LinearSpec from one or more torch Linear layers, fused along the
    output dimension ([out_1 + out_2 + ..., in])."""
    spec.weight = np.concatenate([_array(lin.weight) for lin in layers])
    spec.bias = np.concatenate([_array(lin.bias) for lin in layers])


def _norm(spec: Any, norm: Any) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _ffn(spec: Any, sublayer: Any, ff: Any) -> None:
    _norm(spec.layer_norm, sublayer.norm)
    _linear(spec.linear_0, [ff.w_1])
    _linear(spec.linear_1, [ff.w_2])


def _self_attention(spec: Any, sublayer: Any, attn: Any) -> None:
    _norm(spec.layer_norm, sublayer.norm)
    _linear(spec.linear[0], [attn.q_proj, attn.k_proj, attn.v_proj])
    _linear(spec.linear[1], [attn.out_proj])


def _cross_attention(spec: Any, sublayer: Any, attn: Any) -> None:
    _norm(spec.layer_norm, sublayer.norm)
    _linear(spec.linear[0], [attn.q_proj])
    _linear(spec.linear[1], [attn.k_proj, attn.v_proj])
    _linear(spec.linear[2], [attn.out_proj])


def build_spec(model: EncoderDecoder, pieces: list[str]) -> TransformerSpec:
    """A filled `TransformerSpec` holding the model's weights and vocabulary."""
    from ctranslate2.specs import TransformerSpec, common_spec

    c = model.config
    assert len(pieces) == c.vocab_size, f"{len(pieces)} pieces for vocabulary {c.vocab_size}"
    spec = TransformerSpec.from_config(
        (c.num_encoder_layers, c.num_decoder_layers),
        c.num_heads,
        pre_norm=True,
        no_final_norm=False,
        activation=common_spec.Activation.RELU,
    )
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    spec.config.unk_token = pieces[1]
    spec.config.bos_token = spec.config.decoder_start_token = pieces[c.bos_id]
    spec.config.eos_token = pieces[c.eos_id]
    spec.config.add_source_bos = spec.config.add_source_eos = False  # EOS is in the tokens

    enc, dec = spec.encoder, spec.decoder
    pe = _array(model.position.pe)  # [max_len, D], interleaved sin/cos
    enc.embeddings[0].weight = _array(model.src_embed.lut.weight)  # [V, D]
    enc.position_encodings.encodings = pe
    _norm(enc.layer_norm, model.encoder.norm)
    for layer_spec, layer in zip(enc.layer, model.encoder.layers, strict=True):
        _self_attention(layer_spec.self_attention, layer.sublayer[0], layer.self_attn)
        _ffn(layer_spec.ffn, layer.sublayer[1], layer.feed_forward)

    dec.embeddings.weight = _array(model.tgt_embed.lut.weight)  # [V, D]
    dec.position_encodings.encodings = pe
    _norm(dec.layer_norm, model.decoder.norm)
    for layer_spec, layer in zip(dec.layer, model.decoder.layers, strict=True):
        _self_attention(layer_spec.self_attention, layer.sublayer[0], layer.self_attn)
        _cross_attention(layer_spec.attention, layer.sublayer[1], layer.src_attn)
        _ffn(layer_spec.ffn, layer.sublayer[2], layer.feed_forward)
    _linear(dec.projection, [model.generator.proj])  # [V, D] (tied weight) + bias [V]

    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    return spec


def convert(
    checkpoint_dir: Path, out: Path, quantization: str | None = None, force: bool = True
) -> Path:
    """Write a CTranslate2 model folder for the checkpoint in `checkpoint_dir`."""
    from ctranslate2.converters.converter import Converter

    from core.translation.tokenizer import Tokenizer
    from training.train_translator import load_translator_checkpoint

    model, _, tokenizer_bytes, _ = load_translator_checkpoint(checkpoint_dir)
    tokenizer = Tokenizer.from_bytes(tokenizer_bytes)
    pieces = tokenizer.pieces(list(range(tokenizer.vocab_size)))

    class _Checkpoint(Converter):
        def _load(self) -> TransformerSpec:
            return build_spec(model, pieces)

    return Path(_Checkpoint().convert(str(out), quantization=quantization, force=force))


def check(checkpoint_dir: Path, ct2_dir: Path, sentences: list[str], max_length: int = 0) -> dict:
    """Greedy tokens of CTranslate2 (fp32, 1 thread) against PyTorch's uncached greedy
    reference (`training.decoding.greedy_decode`), sentence by sentence."""
    import ctranslate2
    import torch

    from core.translation.tokenizer import Tokenizer
    from training.decoding import greedy_decode
    from training.train_translator import load_translator_checkpoint

    torch.set_num_threads(1)
    model, tc, tokenizer_bytes, _ = load_translator_checkpoint(checkpoint_dir)
    tok = Tokenizer.from_bytes(tokenizer_bytes, tc.source_normalization)
    translator = ctranslate2.Translator(
        str(ct2_dir), device="cpu", compute_type="float32", inter_threads=1, intra_threads=1
    )
    mismatched, tokens = [], 0
    for i, text in enumerate(sentences):
        source = tok.encode_source(text)
        limit = max_length or 3 * len(source) + 10
        with torch.inference_mode():
            (ref,) = greedy_decode(model, torch.tensor([source]), limit)  # [1, S] -> ids
        (res,) = translator.translate_batch(
            [tok.pieces(source)], beam_size=1, max_decoding_length=limit
        )
        got = [tok.sp.piece_to_id(p) for p in res.hypotheses[0]]
        tokens += len(ref)
        if got != ref:
            mismatched.append({"sentence": i, "pytorch": ref, "ctranslate2": got})
    return {
        "sentences": len(sentences),
        "tokens": tokens,
        "mismatched": len(mismatched),
        "first_mismatches": mismatched[:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="seqserve translator checkpoint dir")
    parser.add_argument("--out", required=True, help="CTranslate2 model folder to write")
    parser.add_argument(
        "--quantization",
        choices=["int8", "int8_float32"],
        help="store weights quantized (default: float32)",
    )
    parser.add_argument(
        "--check",
        type=int,
        default=32,
        metavar="N",
        help="compare greedy tokens with PyTorch on N validation sentences "
        "kept in the checkpoint (0 = skip)",
    )
    args = parser.parse_args(argv)
    out = convert(Path(args.checkpoint), Path(args.out), args.quantization)
    print(f"wrote {out}")
    if args.check and not args.quantization:
        from training.train_translator import load_translator_checkpoint

        payload = load_translator_checkpoint(Path(args.checkpoint))[3]
        sample = [s for s, _ in payload["data"]["validation_sample"][: args.check]]
        result = check(Path(args.checkpoint), out, sample)
        print(
            f"greedy parity with PyTorch: {result['sentences'] - result['mismatched']}/"
            f"{result['sentences']} sentences identical ({result['tokens']} tokens)"
        )
        if result["mismatched"]:
            print(result["first_mismatches"], file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
