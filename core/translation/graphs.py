"""The two graphs decoding runs on, behind a small protocol (`StepModel`) that each backend
implements: onnxruntime in serving (`serving.models.onnx_step_model`), the PyTorch model in
training's evaluation, fakes in tests.

Legend: B batch, S source length, R decoder rows (requests x beams), P cached length,
L decoder layers, H heads, K head width, V vocabulary.

encoder.onnx  src_ids [B, S] int64, src_mask [B, S] bool (True = real token)
              -> memory [B, S, D] float32, cross_k [L, B, H, S, K], cross_v [L, B, H, S, K]
decoder.onnx  tokens [R, 1] int64, positions [R, 1] int64, past_mask [R, P] bool (True = a
              cache slot of this row), src_mask [R, S] bool, and for each layer i:
              past_k_i/past_v_i [R, H, P, K], cross_k_i/cross_v_i [R, H, S, K]
              -> log_probs [R, V] float32, present_k_i/present_v_i [R, H, P+1, K] per layer
P may be 0 (an empty first cache). Rows are independent: each has its own position, cache slots
and source, so requests at different steps and beams of one request share a call.

The decoder takes its cache one tensor per layer (as Hugging Face Optimum's decoders do): a
stacked [L, ...] tensor would be split on the way in and stacked on the way out, two copies of
the cache inside every step. Decoding code sees stacked [L, R, H, P, K] caches: numpy arrays,
whose per-layer feeds are views (`decoder_feeds`), or a step's outputs kept per layer
(`Layers`, `layered_outputs`), which the next step reads as they are and which are stacked
only when rows join.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

ENCODER_INPUTS = ("src_ids", "src_mask")
ENCODER_OUTPUTS = ("memory", "cross_k", "cross_v")
CACHES = ("past_k", "past_v", "cross_k", "cross_v")  # decoder inputs, one per layer each
PRESENT = ("present_k", "present_v")  # decoder outputs, one per layer each


def decoder_inputs(layers: int) -> list[str]:
    """decoder.onnx's input names, in order."""
    return [
        "tokens",
        "positions",
        "past_mask",
        "src_mask",
        *(f"{name}_{i}" for name in CACHES for i in range(layers)),
    ]


def decoder_outputs(layers: int) -> list[str]:
    """decoder.onnx's output names, in order."""
    return ["log_probs", *(f"{name}_{i}" for name in PRESENT for i in range(layers))]


def decoder_feeds(
    tokens: np.ndarray,
    positions: np.ndarray,
    past_k: CacheArray,
    past_v: CacheArray,
    past_mask: np.ndarray,
    cross_k: np.ndarray,
    cross_v: np.ndarray,
    src_mask: np.ndarray,
) -> dict[str, np.ndarray]:
    """decoder.onnx's feeds from stacked caches ([L, R, H, P|S, K]): `Layers` give their
    layers, anything else is read as one array whose layers are views, so no copy."""
    feeds = {"tokens": tokens, "positions": positions, "past_mask": past_mask, "src_mask": src_mask}
    for name, stacked in zip(CACHES, (past_k, past_v, cross_k, cross_v), strict=True):
        layers = stacked.layers if isinstance(stacked, Layers) else np.asarray(stacked)
        feeds.update((f"{name}_{i}", layer) for i, layer in enumerate(layers))
    return feeds


class Layers:
    """A stacked cache [L, R, H, P, K] kept as the decoder wrote it, one array per layer, so
    that the next step reads the layers as they are. Stacking (a copy of the whole cache)
    waits until something reads it as one array (`__array__`): `KVCache.concat` when rows
    join. Selecting rows or trimming slots (`[:, rows]`, `[:, :, :, first:]`) works layer by
    layer and stays `Layers`."""

    __slots__ = ("layers",)
    ndim = 5
    dtype = np.dtype(np.float32)

    def __init__(self, layers: Sequence[np.ndarray]) -> None:
        self.layers = list(layers)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.layers), *self.layers[0].shape)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.layers)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        stacked = np.stack(self.layers)  # [L, R, H, P, K]
        return stacked if dtype is None else stacked.astype(dtype, copy=False)

    def __getitem__(self, index: object) -> Layers | np.ndarray:
        if isinstance(index, tuple) and index and _is_all(index[0]):
            return Layers([np.ascontiguousarray(layer[index[1:]]) for layer in self.layers])
        return np.asarray(self)[index]


def _is_all(index: object) -> bool:
    return isinstance(index, slice) and index == slice(None)


def per_layer(cache: CacheArray) -> list[np.ndarray]:
    """A stacked cache's layers: `Layers` as they are, anything else as views of one array."""
    return cache.layers if isinstance(cache, Layers) else list(np.asarray(cache))


class Window:
    """Rows and slots of a stacked cache [L, R0, H, W, K], not copied: base[:, rows, :,
    start:stop] (`rows` None: every row). Selecting rows (`[:, rows]`) or trimming slots
    (`[:, :, :, a:b]`) gives another window on the same base. A step backend that reads caches
    in place (`StepModel.reads_windows`, the native translator) takes the base and the
    indices; anything else reads the window through `__array__`, one copy."""

    __slots__ = ("base", "rows", "start", "stop")
    ndim = 5
    dtype = np.dtype(np.float32)

    def __init__(self, base: CacheArray, rows: np.ndarray | None, start: int, stop: int) -> None:
        self.base, self.rows, self.start, self.stop = base, rows, start, stop

    @classmethod
    def of(cls, cache: CacheArray) -> Window:
        return cache if isinstance(cache, Window) else cls(cache, None, 0, cache.shape[3])

    @property
    def shape(self) -> tuple[int, ...]:
        layers, rows, heads, _, head_dim = self.base.shape
        rows = rows if self.rows is None else len(self.rows)
        return (layers, rows, heads, self.stop - self.start, head_dim)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        window = slice(self.start, self.stop)
        rows = slice(None) if self.rows is None else self.rows
        out = np.stack([layer[rows][:, :, window] for layer in per_layer(self.base)])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, index: object) -> Window | np.ndarray:
        if isinstance(index, tuple) and len(index) == 2 and _is_all(index[0]):
            picked = np.asarray(index[1])
            if picked.ndim == 1 and picked.dtype.kind in "iu":  # rows, in a new order
                rows = picked if self.rows is None else self.rows[picked]
                return Window(self.base, rows, self.start, self.stop)
        if (
            isinstance(index, tuple)
            and len(index) == 4
            and all(_is_all(i) for i in index[:3])
            and isinstance(index[3], slice)
            and index[3].step is None
        ):
            first, last, _ = index[3].indices(self.stop - self.start)
            return Window(self.base, self.rows, self.start + first, self.start + max(first, last))
        return np.asarray(self)[index]


class Joined:
    """Rows of several caches side by side, not copied: what `KVCache.concat` gives a step
    backend that reads caches in place. Part p, a `Window` [L, R_p, H, W_p, K], lies at slots
    firsts[p] .. firsts[p] + W_p of the joined width (its slots are the last ones of a left-
    padded cache, the first ones of a right-padded one); a row's other slots are padding,
    zeros as `KVCache.concat` would write them. Row r is row rows[r] of part parts_of[r].
    Selecting rows and trimming slots give another `Joined` on the same parts; a selection
    that leaves more rows held than used (dead rows keep their part's arrays alive) copies the
    live rows into one array instead, so memory stays within twice the live rows."""

    __slots__ = ("firsts", "parts", "parts_of", "rows", "width")
    ndim = 5
    dtype = np.dtype(np.float32)

    def __init__(
        self,
        parts: Sequence[Window],
        firsts: Sequence[int],
        width: int,
        parts_of: np.ndarray,
        rows: np.ndarray,
    ) -> None:
        self.parts, self.firsts, self.width = list(parts), list(firsts), width
        self.parts_of, self.rows = parts_of, rows

    @classmethod
    def of(cls, a: CacheArray, b: CacheArray, width: int, left: bool) -> Joined:
        """The rows of `a` then those of `b`, padded to `width` slots on the left (a cache's
        slots) or on the right (source positions)."""
        parts: list[Window] = []
        firsts: list[int] = []
        parts_of: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        for cache in (a, b):
            shift = width - cache.shape[3] if left else 0
            if isinstance(cache, Joined):
                parts_of.append(cache.parts_of + len(parts))
                rows.append(cache.rows)
                parts += cache.parts
                firsts += [first + shift for first in cache.firsts]
            else:
                window = Window.of(cache)
                parts_of.append(np.full(window.shape[1], len(parts), np.int64))
                rows.append(np.arange(window.shape[1], dtype=np.int64))
                parts.append(window)
                firsts.append(shift)
        return cls(parts, firsts, width, np.concatenate(parts_of), np.concatenate(rows))

    @property
    def shape(self) -> tuple[int, ...]:
        layers, _, heads, _, head_dim = self.parts[0].shape
        return (layers, len(self.rows), heads, self.width, head_dim)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)  # [L, R, H, W, K]
        for p, (part, first) in enumerate(zip(self.parts, self.firsts, strict=True)):
            mine = np.flatnonzero(self.parts_of == p)
            slots = slice(first, first + part.shape[3])
            out[:, mine, :, slots] = np.asarray(part[:, self.rows[mine]])
        return out if dtype is None else out.astype(dtype, copy=False)

    def layout(self) -> tuple[list[Window], np.ndarray, list[tuple[int, int, int]]]:
        """For a backend: the parts, each row's (part, row of the part's base array) [R, 2],
        and each part's (first slot here, slots, first slot in its base)."""
        base_rows = np.empty_like(self.rows)
        for p, part in enumerate(self.parts):
            mine = self.parts_of == p
            base_rows[mine] = self.rows[mine] if part.rows is None else part.rows[self.rows[mine]]
        slots = [
            (first, part.stop - part.start, part.start)
            for part, first in zip(self.parts, self.firsts, strict=True)
        ]
        return self.parts, np.stack([self.parts_of, base_rows], axis=1), slots

    def __getitem__(self, index: object) -> Joined | np.ndarray:
        if isinstance(index, tuple) and len(index) == 2 and _is_all(index[0]):
            picked = np.asarray(index[1])
            if picked.ndim == 1 and picked.dtype.kind in "iu":  # rows, in a new order
                return self._select(self.parts_of[picked], self.rows[picked])
        if (
            isinstance(index, tuple)
            and len(index) == 4
            and all(_is_all(i) for i in index[:3])
            and isinstance(index[3], slice)
            and index[3].step is None
        ):
            a, b, _ = index[3].indices(self.width)
            b = max(a, b)
            parts, firsts = [], []
            for part, first in zip(self.parts, self.firsts, strict=True):
                lo, hi = max(first, a), min(first + part.shape[3], b)
                hi = max(lo, hi)  # a part wholly outside keeps no slot
                parts.append(part[:, :, :, lo - first : hi - first])
                firsts.append(min(lo, b) - a)
            return Joined(parts, firsts, b - a, self.parts_of, self.rows)
        return np.asarray(self)[index]

    def _select(self, parts_of: np.ndarray, rows: np.ndarray) -> Joined | np.ndarray:
        used = np.unique(parts_of)
        held = sum(self.parts[p].base.shape[1] for p in used)
        if held > 2 * len(rows) + 16:  # dead rows hold too much: the live ones, copied
            return np.asarray(Joined(self.parts, self.firsts, self.width, parts_of, rows))
        renumber = np.zeros(len(self.parts), np.int64)
        renumber[used] = np.arange(len(used))
        return Joined(
            [self.parts[p] for p in used],
            [self.firsts[p] for p in used],
            self.width,
            renumber[parts_of],
            rows,
        )


def layered_outputs(
    outputs: Sequence[np.ndarray], layers: int
) -> tuple[np.ndarray, Layers, Layers]:
    """decoder.onnx's outputs (in `decoder_outputs` order) -> log_probs [R, V],
    present_k/present_v [L, R, H, P+1, K] as `Layers` (no copy)."""
    return outputs[0], Layers(outputs[1 : 1 + layers]), Layers(outputs[1 + layers : 1 + 2 * layers])


def stacked_outputs(
    outputs: Sequence[np.ndarray], layers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """decoder.onnx's outputs (in `decoder_outputs` order) -> log_probs [R, V],
    present_k/present_v [L, R, H, P+1, K]."""
    return (
        outputs[0],
        np.stack(outputs[1 : 1 + layers]),
        np.stack(outputs[1 + layers : 1 + 2 * layers]),
    )


class CacheArray(Protocol):
    """A stacked cache [L, R, H, P, K]: a numpy array, or anything numpy reads as one (a
    runtime may keep the layers on its device between steps, as serving's `DeviceCache`
    does, and copy them to the host only when `np.asarray` asks)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray: ...

    def __getitem__(self, index: object) -> np.ndarray: ...


class StepModel(Protocol):
    """An encoder plus a cached decoder step, on numpy arrays. A backend whose `step` reads
    `Window` caches in place sets `reads_windows = True` (the decoding loop then keeps row
    selections and trims as windows instead of copying them)."""

    num_layers: int
    num_heads: int
    head_dim: int

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """src_ids [B, S] int64, src_mask [B, S] bool -> cross_k, cross_v [L, B, H, S, K]."""
        ...

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
    ) -> tuple[np.ndarray, CacheArray, CacheArray]:
        """One step (shapes in the module docstring) -> log_probs, present_k, present_v."""
        ...


class GraphError(RuntimeError):
    """A graph's inputs or outputs are not the translator's."""


def check_names(
    graph: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    expected_inputs: Sequence[str],
    expected_outputs: Sequence[str],
) -> None:
    """GraphError unless a graph has exactly `expected_inputs` and at least
    `expected_outputs`."""
    got_in, got_out = set(inputs), set(outputs)
    if got_in != set(expected_inputs) or not set(expected_outputs) <= got_out:
        raise GraphError(
            f"{graph}: inputs {sorted(got_in)} / outputs {sorted(got_out)}; "
            f"expected inputs {sorted(expected_inputs)} and outputs "
            f"{sorted(expected_outputs)}"
        )
