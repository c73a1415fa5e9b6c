"""The per-row arrays a decode batch carries between steps: the self-attention key/value cache
with its slot mask, and the source keys/values with the source padding mask.

Rows that joined at different steps share one cache width P: a row's own slots are the last
ones, the slots before it joined are masked out (left padding). Sources of different lengths
share one width S, right-padded and masked. `trim` drops columns no row uses, so P stays at the
longest live hypothesis and S at the longest live source.

Legend: L layers, R rows, H heads, P cached length, S source length, K head width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.translation.graphs import CacheArray, Joined, Layers, Window, per_layer


def _rows(cache: CacheArray, rows: np.ndarray) -> CacheArray:
    """Rows of a cache, not copied: a `Joined`'s own selection, else a `Window`."""
    return cache[:, rows] if isinstance(cache, Joined) else Window.of(cache)[:, rows]


def _joined_cache(a: CacheArray, b: CacheArray, width: int, left: bool) -> np.ndarray:
    """Keys or values [L, R, H, W, K]: `_joined` along the slots."""
    return _joined(a, b, 3, width, left)


def _joined(a: CacheArray, b: CacheArray, axis: int, width: int, left: bool) -> np.ndarray:
    """The rows of `a` then those of `b` (axis 0 of a mask [R, W], axis 1 of keys or values
    [L, R, H, W, K]), each padded with zeros (False) to `width` along `axis`: on the left for
    cache slots, on the right for source positions. One allocation, no padded intermediates:
    each part is written into place once (a `Window`'s rows gathered straight from its base),
    and only the padding is zeroed."""
    row_axis = 0 if a.ndim == 2 else 1
    shape = list(a.shape)
    shape[row_axis] = a.shape[row_axis] + b.shape[row_axis]
    shape[axis] = width
    out = np.empty(shape, a.dtype)
    start = 0
    for part in (a, b):
        rows = slice(start, start + part.shape[row_axis])
        n = part.shape[axis]
        cols, pad = (
            (slice(width - n, width), slice(0, width - n))
            if left
            else (slice(0, n), slice(n, width))
        )
        index = [slice(None)] * a.ndim
        index[row_axis] = rows
        index[axis] = pad
        out[tuple(index)] = 0
        index[axis] = cols
        if isinstance(part, Window):  # gathered from its base into place, layer by layer
            for layer, base in enumerate(per_layer(part.base)):
                window = base[:, :, part.start : part.stop]
                if part.rows is None:
                    out[(layer, *index[1:])] = window
                else:  # unbuffered ("clip": the rows are in range by construction)
                    np.take(window, part.rows, axis=0, out=out[(layer, *index[1:])], mode="clip")
        else:
            out[tuple(index)] = np.asarray(part)  # a DeviceCache comes to the host here
        start = rows.stop
    return out


@dataclass
class KVCache:
    """past_k/past_v [L, R, H, P, K] float32 (numpy, or a step's DeviceCache until a change of
    rows reads it), past_mask [R, P] bool, cross_k/cross_v [L, R, H, S, K] float32,
    src_mask [R, S] bool."""

    past_k: CacheArray
    past_v: CacheArray
    past_mask: np.ndarray
    cross_k: np.ndarray
    cross_v: np.ndarray
    src_mask: np.ndarray

    @classmethod
    def empty(cls, layers: int, heads: int, head_dim: int) -> KVCache:
        kv = np.zeros((layers, 0, heads, 0, head_dim), np.float32)  # [L, 0, H, 0, K]
        mask = np.zeros((0, 0), bool)  # [0, 0]
        return cls(kv, kv, mask, kv, kv, mask)

    @classmethod
    def for_sources(cls, cross_k: np.ndarray, cross_v: np.ndarray, src_mask: np.ndarray) -> KVCache:
        """New rows with an empty self-attention cache. cross_k/v [L, R, H, S, K],
        src_mask [R, S]."""
        layers, rows, heads, _, head_dim = cross_k.shape
        past = np.zeros((layers, rows, heads, 0, head_dim), np.float32)  # [L, R, H, 0, K]
        return cls(past, past, np.zeros((rows, 0), bool), cross_k, cross_v, src_mask)

    @property
    def rows(self) -> int:
        return self.past_mask.shape[0]

    @property
    def past_len(self) -> int:
        return self.past_mask.shape[1]

    def appended(self, present_k: CacheArray, present_v: CacheArray) -> KVCache:
        """After a step: the graph's present_k/v [L, R, H, P+1, K] become the cache, and the
        new slot belongs to every row."""
        mask = np.concatenate([self.past_mask, np.ones((self.rows, 1), bool)], axis=1)
        return KVCache(present_k, present_v, mask, self.cross_k, self.cross_v, self.src_mask)

    def take(self, rows: np.ndarray, same_sources: bool = False, windows: bool = False) -> KVCache:
        """Select and reorder rows (beam reordering, dropping finished rows). `same_sources`:
        the caller knows every new row's source is the old row's at that index (beams of one
        request reordered among themselves: they share one source), so the source keys and
        values, the largest arrays, are kept rather than copied. `windows`: the keys and
        values become `Window`s on the arrays they are (no copy), for a step backend that
        reads them in place."""
        if windows:
            past_k, past_v = _rows(self.past_k, rows), _rows(self.past_v, rows)
        else:
            past_k, past_v = self.past_k[:, rows], self.past_v[:, rows]
        if same_sources:
            cross_k, cross_v, src_mask = self.cross_k, self.cross_v, self.src_mask
        elif windows:
            cross_k, cross_v = _rows(self.cross_k, rows), _rows(self.cross_v, rows)
            src_mask = self.src_mask[rows]
        else:
            cross_k, cross_v, src_mask = (
                self.cross_k[:, rows],
                self.cross_v[:, rows],
                self.src_mask[rows],
            )
        return KVCache(past_k, past_v, self.past_mask[rows], cross_k, cross_v, src_mask)

    def concat(self, other: KVCache, windows: bool = False) -> KVCache:
        """Rows of `self` then rows of `other`; P is left-padded, S right-padded. Onto no rows
        (a batch that was empty), `other` itself: no copy of its arrays. `windows`: the keys
        and values become `Joined`s of both (no copy), for a step backend that reads them in
        place; otherwise one array each, every part written into place."""
        if self.rows == 0:
            return other
        p = max(self.past_len, other.past_len)
        s = max(self.src_mask.shape[1], other.src_mask.shape[1])
        a, b = self, other
        join = Joined.of if windows else _joined_cache
        return KVCache(
            join(a.past_k, b.past_k, p, left=True),  # [L, Ra+Rb, H, P, K]
            join(a.past_v, b.past_v, p, left=True),
            _joined(a.past_mask, b.past_mask, 1, p, left=True),  # [Ra+Rb, P]
            join(a.cross_k, b.cross_k, s, left=False),  # [L, Ra+Rb, H, S, K]
            join(a.cross_v, b.cross_v, s, left=False),
            _joined(a.src_mask, b.src_mask, 1, s, left=False),  # [Ra+Rb, S]
        )

    def trim(self) -> KVCache:
        """Drop leading cache slots and trailing source positions that no row uses. With no
        rows left, back to an empty cache: a long-lived batch must not carry the old slots
        (left padding) into every later request."""
        if self.rows == 0:
            layers, _, heads, _, head_dim = self.past_k.shape
            return KVCache.empty(layers, heads, head_dim)
        used = self.past_mask.any(axis=0)  # [P]
        first = int(used.argmax()) if used.any() else self.past_len
        src_used = self.src_mask.any(axis=0)  # [S]
        last = len(src_used) - int(src_used[::-1].argmax()) if src_used.any() else 0
        if first == 0 and last == self.src_mask.shape[1]:
            return self

        def c(a: CacheArray) -> CacheArray:  # onnxruntime reads C-ordered buffers
            if isinstance(a, Layers | Window | Joined):  # per layer, or not copied at all
                return a
            return np.ascontiguousarray(a)

        return KVCache(
            c(self.past_k[:, :, :, first:]),
            c(self.past_v[:, :, :, first:]),
            c(self.past_mask[:, first:]),
            c(self.cross_k[:, :, :, :last]),
            c(self.cross_v[:, :, :, :last]),
            c(self.src_mask[:, :last]),
        )
