"""The translator's two ONNX graphs: export-only wrappers and the dynamo export of each.

encoder.onnx  src_ids [B, S] int64, src_mask [B, S] bool
              -> memory [B, S, D], cross_k [L, B, H, S, K], cross_v [L, B, H, S, K]
decoder.onnx  tokens [R, 1] int64, positions [R, 1] int64, past_k/past_v [L, R, H, P, K],
              past_mask [R, P] bool, cross_k/cross_v [L, R, H, S, K], src_mask [R, S] bool
              -> log_probs [R, V], present_k/present_v [L, R, H, P+1, K]

B, S, R and P are dynamic; P = 0 (an empty first cache) works. Hand-written attention goes
through the dynamo exporter (the TorchScript one bakes sequence lengths into attention reshapes;
../shared/docs/environment.md, section 3); export.verify.check_dims proves the dims stayed
dynamic.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.export import Dim

from export.errors import ExportError
from training.models.transformer import EncoderDecoder

ENCODER_INPUTS = ["src_ids", "src_mask"]
ENCODER_OUTPUTS = ["memory", "cross_k", "cross_v"]
DECODER_INPUTS = ["tokens", "positions", "past_k", "past_v", "past_mask", "cross_k", "cross_v",
                  "src_mask"]
DECODER_OUTPUTS = ["log_probs", "present_k", "present_v"]


class EncoderGraph(nn.Module):
    """encode() plus every decoder layer's cross-attention keys and values."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: torch.Tensor, src_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        memory = self.model.encode(src_ids, src_mask.unsqueeze(1))  # [B, S, D]
        cross_k, cross_v = self.model.cross_kv(memory)  # [L, B, H, S, K] each
        return memory, cross_k, cross_v


class DecoderStepGraph(nn.Module):
    """decode_step(): one cached step for R independent rows."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, past_k: torch.Tensor,
                past_v: torch.Tensor, past_mask: torch.Tensor, cross_k: torch.Tensor,
                cross_v: torch.Tensor, src_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.decode_step(tokens, positions, past_k, past_v, past_mask, cross_k,
                                      cross_v, src_mask)


def example_inputs(model: EncoderDecoder, rows: int = 3, past: int = 4, src: int = 5
                   ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Encoder and decoder example inputs; sizes >= 2 so no dim specialises to 0 or 1."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    src_ids = torch.randint(4, c.vocab_size, (rows, src), generator=g)  # [B, S]
    src_mask = torch.ones(rows, src, dtype=torch.bool)  # [B, S]
    kv = (c.num_decoder_layers, rows, c.num_heads, past, c.head_dim)
    cross = (c.num_decoder_layers, rows, c.num_heads, src, c.head_dim)
    decoder = (torch.randint(4, c.vocab_size, (rows, 1), generator=g),  # tokens [R, 1]
               torch.full((rows, 1), past, dtype=torch.long),  # positions [R, 1]
               torch.randn(kv, generator=g), torch.randn(kv, generator=g),  # [L, R, H, P, K]
               torch.ones(rows, past, dtype=torch.bool),  # past_mask [R, P]
               torch.randn(cross, generator=g), torch.randn(cross, generator=g),
               torch.ones(rows, src, dtype=torch.bool))  # src_mask [R, S]
    return (src_ids, src_mask), decoder


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
            input_names: list[str], output_names: list[str],
            dynamic_shapes: dict[str, dict[int, Dim]], opset: int | None) -> int:
    kwargs = {"opset_version": opset} if opset else {}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, str(path), input_names=input_names,
                              output_names=output_names, dynamic_shapes=dynamic_shapes,
                              dynamo=True, external_data=False, verbose=False, **kwargs)
    except Exception as err:
        raise ExportError(f"torch.onnx.export of {path.name} failed: {err}") from err
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_graphs(model: EncoderDecoder, folder: Path, opset: int | None = None) -> int:
    """Write folder/encoder.onnx and folder/decoder.onnx; returns the opset."""
    max_len = model.config.max_len
    batch, rows = Dim("batch", min=1, max=4096), Dim("rows", min=1, max=4096)
    src, past = Dim("src_len", min=1, max=max_len), Dim("past_len", min=0, max=4 * max_len)
    enc_args, dec_args = example_inputs(model)
    enc_shapes = {"src_ids": {0: batch, 1: src}, "src_mask": {0: batch, 1: src}}
    dec_shapes = {"tokens": {0: rows}, "positions": {0: rows},
                  "past_k": {1: rows, 3: past}, "past_v": {1: rows, 3: past},
                  "past_mask": {0: rows, 1: past}, "cross_k": {1: rows, 3: src},
                  "cross_v": {1: rows, 3: src}, "src_mask": {0: rows, 1: src}}
    opset_written = _export(EncoderGraph(model), enc_args, folder / "encoder.onnx",
                            ENCODER_INPUTS, ENCODER_OUTPUTS, enc_shapes, opset)
    _export(DecoderStepGraph(model), dec_args, folder / "decoder.onnx", DECODER_INPUTS,
            DECODER_OUTPUTS, dec_shapes, opset)
    return opset_written
