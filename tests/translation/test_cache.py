"""KVCache by contract: joining rows pads cache slots on the left and sources on the right."""

from __future__ import annotations

import numpy as np

from core.translation.cache import KVCache
from core.translation.graphs import Layers

L, H, K = 2, 3, 4


def _cache(rows: int, past: int, src: int, seed: int) -> KVCache:
    rng = np.random.default_rng(seed)
    kv = lambda w: rng.standard_normal((L, rows, H, w, K)).astype(np.float32)  # noqa: E731
    return KVCache(
        kv(past),
        kv(past),
        rng.random((rows, past)) > 0.3,
        kv(src),
        kv(src),
        rng.random((rows, src)) > 0.3,
    )


def _padded(a: np.ndarray, axis: int, width: int, left: bool) -> np.ndarray:
    widths = [(0, 0)] * a.ndim
    extra = width - a.shape[axis]
    widths[axis] = (extra, 0) if left else (0, extra)
    return np.pad(a, widths)


def test_concat_left_pads_slots_and_right_pads_sources() -> None:
    a, b = _cache(2, 5, 3, seed=0), _cache(3, 2, 6, seed=1)
    for first, second in ((a, b), (b, a)):
        joined = first.concat(second)
        assert joined.rows == 5 and joined.past_len == 5 and joined.src_mask.shape == (5, 6)
        for name, axis, width, left in (
            ("past_k", 3, 5, True),
            ("past_v", 3, 5, True),
            ("past_mask", 1, 5, True),
            ("cross_k", 3, 6, False),
            ("cross_v", 3, 6, False),
            ("src_mask", 1, 6, False),
        ):
            x, y = getattr(first, name), getattr(second, name)
            row_axis = 0 if x.ndim == 2 else 1
            expected = np.concatenate(
                [_padded(x, axis, width, left), _padded(y, axis, width, left)], axis=row_axis
            )
            got = getattr(joined, name)
            assert got.dtype == x.dtype and got.flags.c_contiguous, name
            np.testing.assert_array_equal(got, expected, err_msg=name)


def test_concat_onto_an_empty_cache_keeps_the_new_rows() -> None:
    new = _cache(2, 0, 4, seed=2)
    joined = KVCache.empty(L, H, K).concat(new)
    for name in ("past_k", "past_mask", "cross_v", "src_mask"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(new, name), err_msg=name)


def test_a_cache_kept_per_layer_behaves_as_the_stacked_one() -> None:
    """`Layers` (a step's outputs as the decoder wrote them) selects rows, trims slots and
    joins as the stacked arrays do, and stays per layer until rows join."""
    stacked = _cache(4, 5, 3, seed=2)
    stacked.past_mask[:, :2] = False  # two slots no row uses: trim drops them
    layered = KVCache(
        Layers(list(stacked.past_k)),
        Layers(list(stacked.past_v)),
        stacked.past_mask,
        stacked.cross_k,
        stacked.cross_v,
        stacked.src_mask,
    )
    rows = np.array([3, 1, 1])
    for a, b in (
        (stacked.take(rows), layered.take(rows)),
        (stacked.take(rows).trim(), layered.take(rows).trim()),
        (stacked.concat(_cache(1, 2, 6, 3)), layered.concat(_cache(1, 2, 6, 3))),
    ):
        for name in ("past_k", "past_v", "past_mask", "cross_k", "cross_v", "src_mask"):
            np.testing.assert_array_equal(np.asarray(getattr(a, name)), getattr(b, name))
    kept = layered.take(rows).trim()
    assert isinstance(kept.past_k, Layers) and kept.past_k.shape == (L, 3, H, 3, K)
    assert all(layer.flags.c_contiguous for layer in kept.past_k)
    assert isinstance(layered.concat(_cache(1, 2, 6, 3)).past_k, np.ndarray)
