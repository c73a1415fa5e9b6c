"""torch.onnx.export with named tensors and a dynamic batch dimension.

Recurrent models go through the TorchScript exporter (dynamo=False): the dynamo exporter
specialises RNN sequence dimensions to the example's (docs/model-repository.md, "Checks every
export runs").
Whatever the exporter, callers check the resulting dims with export.verify.check_dims.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from export.errors import ExportError

BATCH = "batch"


def exporter_name(dynamo: bool) -> str:
    return f"torch.onnx.export(dynamo={dynamo}) torch {torch.__version__}"


def set_output_dims(path: Path, dims: Mapping[str, Sequence[int | None]]) -> None:
    """Write known fixed dims onto graph outputs the exporter left symbolic (None keeps the
    batch symbol). The TorchScript exporter cannot infer dims behind reshapes with -1; the parity
    check then proves onnxruntime produces exactly these shapes."""
    model = onnx.load(str(path))
    for value in model.graph.output:
        want = dims.get(value.name)
        if want is None:
            continue
        shape = value.type.tensor_type.shape
        if len(shape.dim) != len(want):
            raise ExportError(
                f"output {value.name!r} has rank {len(shape.dim)}, expected {len(want)}"
            )
        for dim, w in zip(shape.dim, want, strict=True):
            if w is None:
                if not dim.dim_param:
                    dim.dim_param = BATCH
            elif not dim.HasField("dim_value"):
                dim.dim_value = w
    onnx.save(model, str(path))


def export_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int | None = None,
    dynamo: bool = False,
) -> int:
    """Export `module(*args)` to a single-file ONNX graph at `path`, with dim 0 of every input
    and output named "batch" (dynamic). Returns the opset of the default domain written."""
    axes = {name: {0: BATCH} for name in [*input_names, *output_names]}
    kwargs = {"opset_version": opset} if opset else {}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # dynamo=False is deprecated in torch 2.13 but is the exporter that keeps RNNs right
            warnings.simplefilter("ignore", DeprecationWarning)
            # shape-dependent Python branches and the RNN batch-size note: the parity check at
            # batch 1, N and max_batch_size is what proves the traced graph general
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
            if dynamo:
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes=axes,
                    dynamo=True,
                    external_data=False,
                    **kwargs,
                )
            else:
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes=axes,
                    dynamo=False,
                    **kwargs,
                )
    except Exception as err:
        raise ExportError(f"torch.onnx.export failed: {err}") from err
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
