"""The translator's two ONNX graphs: the encoder wrapper, the decoder step (`decoder_step.py`)
and the dynamo export of each.

encoder.onnx  src_ids [B, S] int64, src_mask [B, S] bool
              -> memory [B, S, D], cross_k [L, B, H, S, K], cross_v [L, B, H, S, K]
decoder.onnx  tokens [R, 1] int64, positions [R, 1] int64, past_mask [R, P] bool,
              src_mask [R, S] bool, per layer i past_k_i/past_v_i [R, H, P, K] and
              cross_k_i/cross_v_i [R, H, S, K]
              -> log_probs [R, V], per layer present_k_i/present_v_i [R, H, P+1, K]

B, S, R and P are dynamic; P = 0 (an empty first cache) works. Hand-written attention goes
through the dynamo exporter (the TorchScript one bakes sequence lengths into attention
reshapes: docs/model-repository.md, "Checks every export runs"); export.verify.check_dims
proves the dims stayed dynamic.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.export import Dim

from core.translation import graphs as graph_names
from export.decoder_step import DecoderStep
from export.errors import ExportError
from training.models.transformer import EncoderDecoder

ENCODER_INPUTS = list(graph_names.ENCODER_INPUTS)
ENCODER_OUTPUTS = list(graph_names.ENCODER_OUTPUTS)


class EncoderGraph(nn.Module):
    """encode() plus every decoder layer's cross-attention keys and values."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        memory = self.model.encode(src_ids, src_mask.unsqueeze(1))  # [B, S, D]
        cross_k, cross_v = self.model.cross_kv(memory)  # [L, B, H, S, K] each
        return memory, cross_k, cross_v


def example_inputs(
    model: EncoderDecoder, rows: int = 3, past: int = 4, src: int = 5
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Encoder and decoder example inputs (decoder: in `decoder_inputs` order); sizes >= 2 so
    no dim specialises to 0 or 1."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    src_ids = torch.randint(4, c.vocab_size, (rows, src), generator=g)  # [B, S]
    src_mask = torch.ones(rows, src, dtype=torch.bool)  # [B, S]
    layers = c.num_decoder_layers
    kv = (rows, c.num_heads, past, c.head_dim)  # [R, H, P, K]
    cross = (rows, c.num_heads, src, c.head_dim)  # [R, H, S, K]
    caches = [
        torch.randn(shape, generator=g) for shape in (kv, kv, cross, cross) for _ in range(layers)
    ]
    decoder = (
        torch.randint(4, c.vocab_size, (rows, 1), generator=g),  # tokens [R, 1]
        torch.full((rows, 1), past, dtype=torch.long),  # positions [R, 1]
        torch.ones(rows, past, dtype=torch.bool),  # past_mask [R, P]
        torch.ones(rows, src, dtype=torch.bool),  # src_mask [R, S]
        *caches,
    )
    return (src_ids, src_mask), decoder


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, object],
    opset: int | None,
) -> int:
    kwargs = {"opset_version": opset} if opset else {}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
                **kwargs,
            )
    except Exception as err:
        raise ExportError(f"torch.onnx.export of {path.name} failed: {err}") from err
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _decoder_shapes(model: EncoderDecoder) -> dict[str, object]:
    max_len, layers = model.config.max_len, model.config.num_decoder_layers
    rows = Dim("rows", min=1, max=4096)
    src, past = Dim("src_len", min=1, max=max_len), Dim("past_len", min=0, max=4 * max_len)
    return {
        "tokens": {0: rows},
        "positions": {0: rows},
        "past_mask": {0: rows, 1: past},
        "src_mask": {0: rows, 1: src},
        "caches": tuple(
            {0: rows, 2: length} for length in (past, past, src, src) for _ in range(layers)
        ),
    }


def export_step(
    step: nn.Module,
    model: EncoderDecoder,
    path: Path,
    output_names: list[str] | None = None,
    opset: int | None = None,
) -> int:
    """Export a decoder step module of `model` (DecoderStep, or a variant taking the same
    inputs) to `path`; outputs named as decoder.onnx's unless `output_names` says otherwise.
    Returns the opset."""
    layers = model.config.num_decoder_layers
    return _export(
        step,
        example_inputs(model)[1],
        path,
        graph_names.decoder_inputs(layers),
        output_names or graph_names.decoder_outputs(layers),
        _decoder_shapes(model),
        opset,
    )


def export_graphs(model: EncoderDecoder, folder: Path, opset: int | None = None) -> int:
    """Write folder/encoder.onnx and folder/decoder.onnx; returns the opset."""
    batch = Dim("batch", min=1, max=4096)
    src = Dim("src_len", min=1, max=model.config.max_len)
    enc_shapes = {"src_ids": {0: batch, 1: src}, "src_mask": {0: batch, 1: src}}
    opset_written = _export(
        EncoderGraph(model),
        example_inputs(model)[0],
        folder / "encoder.onnx",
        ENCODER_INPUTS,
        ENCODER_OUTPUTS,
        enc_shapes,
        opset,
    )
    export_step(DecoderStep(model), model, folder / "decoder.onnx", opset=opset)
    return opset_written
