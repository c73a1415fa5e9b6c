"""The translator's decoder step in native code (`core/native/src`: int8 products on Intel AMX
or AVX-512 VNNI, portable loops elsewhere) behind `graphs.StepModel`. The encoder stays with
the backend it wraps (onnxruntime in serving).

It reads `decoder_step.npz`, which `seqserve export --quantize int8` writes beside
decoder.onnx (`export.native_step`): the step's float32 weights and its settings. It quantises
the weights when it loads (int8, one scale per output column) and each product's input at run
time (uint8, one scale and zero point per row), so it is its own int8 model, nearer fp32 than
onnxruntime's dynamic int8 (one scale per matrix and per input); `seqserve export` measures it
beside the graphs.

Legend: L decoder layers, R rows, H heads, P cached length, S source length, K head width,
V vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.translation.graphs import CacheArray, GraphError, Layers, StepModel

FILE = "decoder_step.npz"

try:
    from core.native import _decoder
except ImportError:  # not built (`make native` builds it)
    _decoder = None


def kernel() -> str | None:
    """The int8 kernel the native step runs here: "amx", "avx512_vnni" or "portable"; None
    when the extension is not built."""
    return None if _decoder is None else _decoder.kernel()


def fast_here() -> bool:
    """Whether the native step beats onnxruntime's int8 graph on this machine: it needs AMX or
    AVX-512 VNNI (its portable kernel is far slower than onnxruntime's)."""
    return kernel() in ("amx", "avx512_vnni")


def chosen(setting: str, on_cpu: bool) -> bool:
    """Whether a translator whose config says `decoder_step: setting` (spec.DECODER_STEPS)
    decodes with the native step; `on_cpu`: its graphs run on the CPU (the native step is
    CPU code: on a GPU the graphs keep the caches on the device)."""
    if setting == "native":
        return True
    return setting == "auto" and on_cpu and fast_here()


def load_step(weights: Path) -> object:
    """The native step of `decoder_step.npz` (GraphError if the extension is not built, the
    file is missing, or its weights are not a decoder step's)."""
    if _decoder is None:
        raise GraphError("the native decoder step is not built (make native)")
    if not weights.is_file():
        raise GraphError(f"{weights.name} not found in {weights.parent}")
    with np.load(weights) as npz:
        arrays = {name: npz[name] for name in npz.files}
    try:
        settings = json.loads(str(arrays.pop("settings")))
        return _decoder.Step(arrays, **settings)
    except (KeyError, TypeError, ValueError) as err:
        raise GraphError(f"{weights}: {err}") from err


class NativeStepModel:
    """`encode` on `encoder` (any StepModel), `step` in native code."""

    def __init__(self, encoder: StepModel, weights: Path) -> None:
        self.encoder = encoder
        self.num_layers, self.num_heads = encoder.num_layers, encoder.num_heads
        self.head_dim = encoder.head_dim
        self.native = load_step(weights)
        if self.native.num_layers != self.num_layers or self.native.num_heads != self.num_heads:
            raise GraphError(
                f"{weights}: {self.native.num_layers} layers, {self.native.num_heads} heads; "
                f"the model has {self.num_layers} and {self.num_heads}"
            )

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.encode(src_ids, src_mask)

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
        # per-layer arrays: a step's own outputs as they are, stacked caches as views
        caches = [
            stacked.layers if isinstance(stacked, Layers) else list(np.asarray(stacked))
            for stacked in (past_k, past_v, cross_k, cross_v)
        ]
        log_probs, present_k, present_v = self.native.step(
            tokens, positions, past_mask, src_mask, *caches
        )
        return log_probs, Layers(present_k), Layers(present_v)
