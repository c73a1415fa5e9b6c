"""KVCache by contract: joining rows pads cache slots on the left and sources on the right."""

from __future__ import annotations

import numpy as np

from core.translation.cache import KVCache
from core.translation.graphs import Joined, Layers, Window

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
        assert getattr(joined, name) is getattr(new, name), name  # kept, not copied


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


def test_a_window_selects_and_trims_as_the_arrays_do() -> None:
    """`Window` (rows and slots of a cache, not copied) reads as numpy's fancy indexing and
    slicing of the same arrays would give, however the selections and trims compose."""
    cache = _cache(5, 6, 4, seed=3)
    base = np.asarray(cache.past_k)
    for source in (cache.past_k, Layers(list(cache.past_k))):
        window = Window.of(source)
        assert window.shape == base.shape
        picked = window[:, np.array([4, 0, 0, 2])]
        assert isinstance(picked, Window) and picked.shape == (L, 4, H, 6, K)
        np.testing.assert_array_equal(np.asarray(picked), base[:, [4, 0, 0, 2]])
        trimmed = picked[:, :, :, 2:][:, np.array([3, 1])][:, :, :, :3]
        assert isinstance(trimmed, Window) and trimmed.shape == (L, 2, H, 3, K)
        np.testing.assert_array_equal(np.asarray(trimmed), base[:, [2, 0]][:, :, :, 2:5])
        np.testing.assert_array_equal(trimmed[0, 1], base[0, 0, :, 2:5])  # anything else: numpy


def test_a_cache_of_windows_takes_and_trims_as_the_copied_one() -> None:
    """`KVCache.take(..., windows=True)` and `trim` give windows that read as the copies the
    default gives."""
    cache = _cache(4, 5, 3, seed=4)
    cache.past_mask[:, :2] = False
    rows = np.array([3, 1, 1])
    copied = cache.take(rows).trim()
    windowed = cache.take(rows, windows=True).trim()
    for name in ("past_k", "past_v", "cross_k", "cross_v"):
        assert isinstance(getattr(windowed, name), Window), name
        np.testing.assert_array_equal(np.asarray(getattr(windowed, name)), getattr(copied, name))
    for name in ("past_mask", "src_mask"):
        np.testing.assert_array_equal(getattr(windowed, name), getattr(copied, name))
    # joined with new rows (wider sources, no cache yet), each way: the same arrays
    new = _cache(2, 0, 6, seed=5)
    for a, b in ((copied, new), (new, copied)):
        want = a.concat(b)
        got = (windowed if a is copied else a).concat(windowed if b is copied else b)
        for name in ("past_k", "past_v", "past_mask", "cross_k", "cross_v", "src_mask"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_a_join_of_windows_reads_as_the_copied_join() -> None:
    """`KVCache.concat(..., windows=True)` keeps both sides' keys and values where they are
    (`Joined`: no copy) and reads as the copied join; selecting rows, trimming and joining
    again compose as on the copies."""
    a, b, c = _cache(3, 5, 3, seed=6), _cache(2, 2, 6, seed=7), _cache(4, 0, 4, seed=8)
    a.past_mask[:, :1] = False
    copied = a.take(np.array([2, 0])).concat(b)
    joined = a.take(np.array([2, 0]), windows=True).concat(b, windows=True)
    for step in range(4):
        for name in ("past_k", "past_v", "cross_k", "cross_v"):
            assert isinstance(getattr(joined, name), Joined), (step, name)
            got = np.asarray(getattr(joined, name))
            np.testing.assert_array_equal(got, getattr(copied, name), err_msg=f"{step} {name}")
        for name in ("past_mask", "src_mask"):
            np.testing.assert_array_equal(getattr(joined, name), getattr(copied, name))
        if step == 0:  # rows reordered, one twice
            rows = np.array([3, 0, 0, 2])
            copied, joined = copied.take(rows), joined.take(rows, windows=True)
        elif step == 1:  # slots and source positions no row uses dropped
            copied.past_mask[:, :2] = joined.past_mask[:, :2] = False
            copied.src_mask[:, 5:] = joined.src_mask[:, 5:] = False
            copied, joined = copied.trim(), joined.trim()
            assert joined.past_len == 3 and joined.src_mask.shape[1] == 5
        elif step == 2:  # joined again, onto a join: one Joined of three parts
            copied, joined = copied.concat(c), joined.concat(c, windows=True)
            assert len(joined.cross_k.parts) == 3


def test_a_join_keeps_at_most_twice_its_live_rows() -> None:
    """Parts stay alive while any of their rows is live; a selection that would hold more
    than twice the live rows (and 16) copies the live rows into one array instead."""
    big, small = _cache(40, 3, 4, seed=9), _cache(2, 3, 4, seed=10)
    joined = Joined.of(big.cross_k, small.cross_k, 4, left=False)
    kept = joined[:, np.arange(30)]
    assert isinstance(kept, Joined)  # 40 held for 30 live
    few = joined[:, np.array([41, 0])]
    assert isinstance(few, np.ndarray)  # 42 held for 2 live: copied
    np.testing.assert_array_equal(few, np.asarray(joined)[:, [41, 0]])
    only_small = joined[:, np.array([40, 41])]
    assert isinstance(only_small, Joined) and len(only_small.parts) == 1  # the big part let go
