"""The translator in native code (`core/native/src`: the encoder and the cached decoder step on
int8 products, on Intel AMX, AVX-512 VNNI or AVX2, portable loops elsewhere) behind
`graphs.StepModel`, beside onnxruntime's graphs.

It reads `native.npz`, which `seqserve export --quantize int8` writes into the version folder
(`export/native_weights.py`): the float32 weights and the settings. It quantises the weights
when it loads (int8, one scale per output column) and each product's input at run time (uint8,
one scale and zero point per row), so it is its own int8 model, nearer fp32 than onnxruntime's
dynamic int8 (one scale per matrix and per input); `seqserve export` measures it beside the
graphs.

Legend: L decoder layers, B sentences, R rows, H heads, P cached length, S source length,
K head width, V vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.native import decoder as _decoder  # None when not built (`make native`)
from core.translation.graphs import CacheArray, GraphError, Joined, Layers, Window, per_layer

FILE = "native.npz"


def kernel() -> str | None:
    """The int8 kernel the native translator runs here: "amx", "avx512_vnni", "avx_vnni",
    "avx2" or "portable"; None when the extension is not built."""
    return None if _decoder is None else _decoder.kernel()


def isa() -> str | None:
    """The vector instruction set its element-wise code runs: "avx512", "avx2_vnni", "avx2" or
    "baseline" (the CPU's best, capped by SEQSERVE_NATIVE_ISA); None when the extension is not
    built."""
    return None if _decoder is None else _decoder.isa()


def runtime_of(model: object) -> dict[str, str | None]:
    """What runs a loaded translator's StepModel, for benchmark records: its class (the graphs'
    `OnnxStepModel` or `NativeModel`) and, for the native translator, its kernel and level."""
    native = isinstance(model, NativeModel)
    return {
        "runtime": type(model).__name__,
        "native_kernel": kernel() if native else None,
        "native_isa": isa() if native else None,
    }


def fast_here() -> bool:
    """Whether the native translator beats onnxruntime's int8 graphs on this machine: it needs
    VNNI's int8 dot products (AMX, AVX-512 VNNI, or AVX-VNNI on 256-bit vectors). Its exact
    AVX2 kernel (int16 products) runs at about a third of AVX-512 VNNI's rate, not shown faster
    than onnxruntime's graphs on such CPUs, and its portable loops far slower (docs/benchmarks.md,
    "CPUs without VNNI")."""
    return kernel() in ("amx", "avx512_vnni", "avx_vnni")


def chosen(setting: str, on_cpu: bool) -> bool:
    """Whether a translator whose config says `runtime: setting` (spec.RUNTIMES) runs natively;
    `on_cpu`: its sessions would run on the CPU (on a GPU the graphs keep their caches on the
    device)."""
    if setting == "native":
        return True
    return setting == "auto" and on_cpu and fast_here()


class NativeModel:
    """`native.npz` as a StepModel: `encode` and `step` in native code. Its step reads the
    decoding loop's `Window`s in place, so beam reorders, dropped rows and trims cost no
    copy."""

    reads_windows = True

    def __init__(self, weights: Path) -> None:
        if _decoder is None:
            raise GraphError("the native translator is not built (make native)")
        if not weights.is_file():
            raise GraphError(f"{weights.name} not found in {weights.parent}")
        with np.load(weights) as npz:
            arrays = {name: npz[name] for name in npz.files}
        try:
            settings = json.loads(str(arrays.pop("settings")))
            encoder_layers = settings.pop("encoder_layers")
            self.encoder = _decoder.Encoder(
                arrays,
                num_layers=encoder_layers,
                decoder_layers=settings["num_layers"],
                **{k: v for k, v in settings.items() if k != "num_layers"},
            )
            self.decoder = _decoder.Step(arrays, **settings)
        except (KeyError, TypeError, ValueError) as err:
            raise GraphError(f"{weights}: {err}") from err
        self.num_layers, self.num_heads = self.decoder.num_layers, self.decoder.num_heads
        self.head_dim = arrays["embed"].shape[1] // self.num_heads

    @property
    def providers(self) -> list[str]:
        """Where it runs, in onnxruntime's words, so that serving's device checks treat it as
        they treat sessions (a model asked onto a GPU and given this fails or warns)."""
        return ["CPUExecutionProvider"]

    @property
    def providers_by_part(self) -> dict[str, list[str]]:
        return {"native translator": self.providers}

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.encode(src_ids, src_mask)  # [L, B, H, S, K] each

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
        # the caches where they lie: parts of per-layer arrays, each row's part and row, and
        # each part's slots
        (pk, pv), past_rows, past_slots = _views(past_k, past_v)
        (ck, cv), cross_rows, cross_slots = _views(cross_k, cross_v)
        log_probs, present_k, present_v = self.decoder.step(
            tokens,
            positions,
            past_mask,
            src_mask,
            pk,
            pv,
            ck,
            cv,
            past_rows=past_rows,
            past_slots=past_slots,
            cross_rows=cross_rows,
            cross_slots=cross_slots,
        )
        return log_probs, Layers(present_k), Layers(present_v)


Slots = list[tuple[int, int, int]]


def _layout(cache: CacheArray) -> tuple[list[list[np.ndarray]], np.ndarray | None, Slots | None]:
    """A cache as the native step reads it: its parts' per-layer base arrays, each row's
    (part, base row) [R, 2], and each part's (first slot, slots, first base slot); None for
    the plain case (one array, its rows and slots in order)."""
    if isinstance(cache, Joined):
        parts, rows, slots = cache.layout()
        return [per_layer(part.base) for part in parts], rows, slots
    if isinstance(cache, Window):
        count = cache.stop - cache.start
        rows = None
        if cache.rows is not None:
            rows = np.stack([np.zeros_like(cache.rows), cache.rows], axis=1)
        return [per_layer(cache.base)], rows, [(0, count, cache.start)]
    return [per_layer(cache)], None, None


def _views(
    keys: CacheArray, values: CacheArray
) -> tuple[tuple[list[list[np.ndarray]], list[list[np.ndarray]]], np.ndarray | None, Slots | None]:
    """Keys' and values' parts, and the rows and slots both read (the decoding loop selects,
    trims and joins them together; if they ever differ, both are copied)."""
    k_parts, k_rows, k_slots = _layout(keys)
    v_parts, v_rows, v_slots = _layout(values)
    same_rows = k_rows is v_rows or (
        k_rows is not None and v_rows is not None and np.array_equal(k_rows, v_rows)
    )
    if same_rows and k_slots == v_slots and len(k_parts) == len(v_parts):
        return (k_parts, v_parts), k_rows, k_slots
    return ([per_layer(np.asarray(keys))], [per_layer(np.asarray(values))]), None, None
