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


def _pad(a: np.ndarray, axis: int, before: int, after: int, value: float | bool = 0
         ) -> np.ndarray:
    if before == 0 and after == 0:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (before, after)
    return np.pad(a, widths, constant_values=value)


@dataclass
class KVCache:
    """past_k/past_v [L, R, H, P, K] float32, past_mask [R, P] bool,
    cross_k/cross_v [L, R, H, S, K] float32, src_mask [R, S] bool."""

    past_k: np.ndarray
    past_v: np.ndarray
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
    def for_sources(cls, cross_k: np.ndarray, cross_v: np.ndarray, src_mask: np.ndarray
                    ) -> KVCache:
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

    def appended(self, present_k: np.ndarray, present_v: np.ndarray) -> KVCache:
        """After a step: the graph's present_k/v [L, R, H, P+1, K] become the cache, and the
        new slot belongs to every row."""
        mask = np.concatenate([self.past_mask, np.ones((self.rows, 1), bool)], axis=1)
        return KVCache(present_k, present_v, mask, self.cross_k, self.cross_v, self.src_mask)

    def take(self, rows: np.ndarray) -> KVCache:
        """Select and reorder rows (beam reordering, dropping finished rows)."""
        return KVCache(self.past_k[:, rows], self.past_v[:, rows], self.past_mask[rows],
                       self.cross_k[:, rows], self.cross_v[:, rows], self.src_mask[rows])

    def concat(self, other: KVCache) -> KVCache:
        """Rows of `self` then rows of `other`; P is left-padded, S right-padded."""
        p, s = max(self.past_len, other.past_len), max(self.src_mask.shape[1],
                                                      other.src_mask.shape[1])

        def widen(c: KVCache) -> KVCache:
            dp, ds = p - c.past_len, s - c.src_mask.shape[1]
            return KVCache(_pad(c.past_k, 3, dp, 0), _pad(c.past_v, 3, dp, 0),
                           _pad(c.past_mask, 1, dp, 0, False), _pad(c.cross_k, 3, 0, ds),
                           _pad(c.cross_v, 3, 0, ds), _pad(c.src_mask, 1, 0, ds, False))

        a, b = widen(self), widen(other)
        return KVCache(
            np.concatenate([a.past_k, b.past_k], axis=1),  # [L, Ra+Rb, H, P, K]
            np.concatenate([a.past_v, b.past_v], axis=1),
            np.concatenate([a.past_mask, b.past_mask], axis=0),  # [Ra+Rb, P]
            np.concatenate([a.cross_k, b.cross_k], axis=1),  # [L, Ra+Rb, H, S, K]
            np.concatenate([a.cross_v, b.cross_v], axis=1),
            np.concatenate([a.src_mask, b.src_mask], axis=0),  # [Ra+Rb, S]
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
        c = np.ascontiguousarray  # onnxruntime reads C-ordered buffers
        return KVCache(c(self.past_k[:, :, :, first:]), c(self.past_v[:, :, :, first:]),
                       c(self.past_mask[:, first:]), c(self.cross_k[:, :, :, :last]),
                       c(self.cross_v[:, :, :, :last]), c(self.src_mask[:, :last]))
