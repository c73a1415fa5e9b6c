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
from core.translation.graphs import CacheArray, GraphError, Layers, Window, per_layer

FILE = "native.npz"


def kernel() -> str | None:
    """The int8 kernel the native translator runs here: "amx", "avx512_vnni", "avx2" or
    "portable"; None when the extension is not built."""
    return None if _decoder is None else _decoder.kernel()


def isa() -> str | None:
    """The vector instruction set its element-wise code runs: "avx512", "avx2" or "baseline"
    (the CPU's best, capped by SEQSERVE_NATIVE_ISA); None when the extension is not built."""
    return None if _decoder is None else _decoder.isa()


def fast_here() -> bool:
    """Whether the native translator beats onnxruntime's int8 graphs on this machine: it needs
    AMX or AVX-512 VNNI. Its exact AVX2 kernel (int16 products) runs at about a fifth of VNNI's
    rate, no faster than onnxruntime's graphs on such CPUs, and its portable loops far slower
    (docs/benchmarks.md, "CPUs without VNNI")."""
    return kernel() in ("amx", "avx512_vnni")


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
        # the caches where they lie: per-layer arrays, and for windows their rows and slots
        (pk, pv), past_rows, past_start = _views(past_k, past_v)
        (ck, cv), cross_rows, cross_start = _views(cross_k, cross_v)
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
            past_start=past_start,
            cross_rows=cross_rows,
            cross_start=cross_start,
        )
        return log_probs, Layers(present_k), Layers(present_v)


def _views(
    keys: CacheArray, values: CacheArray
) -> tuple[tuple[list[np.ndarray], list[np.ndarray]], np.ndarray | None, int]:
    """Keys' and values' per-layer base arrays, and the rows and first slot both read (the
    decoding loop selects and trims them together; if they ever differ, both are copied)."""
    if isinstance(keys, Window) and isinstance(values, Window):
        same = keys.start == values.start and (
            keys.rows is values.rows
            or (
                keys.rows is not None
                and values.rows is not None
                and np.array_equal(keys.rows, values.rows)
            )
        )
        if same:
            return (per_layer(keys.base), per_layer(values.base)), keys.rows, keys.start
    return (
        (
            per_layer(np.asarray(keys) if isinstance(keys, Window) else keys),
            per_layer(np.asarray(values) if isinstance(values, Window) else values),
        ),
        None,
        0,
    )
