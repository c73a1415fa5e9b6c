"""The native translator's int8 products (core/native/src/gemm.*) on every kernel this machine
runs, and the vector level (simd.h) that caps the kernels and chooses the element-wise code."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from core.native import decoder

pytestmark = pytest.mark.skipif(decoder is None, reason="core/native not built")


def test_a_vector_level_caps_the_kernels() -> None:
    levels, start = decoder.isas(), decoder.isa()  # (SEQSERVE_NATIVE_ISA may cap the start)
    assert levels[-1] == "baseline" and start in levels
    if "SEQSERVE_NATIVE_ISA" not in os.environ:
        assert start == levels[0]
    assert decoder.use_isa("baseline")
    try:
        assert decoder.isa() == "baseline"
        assert decoder.kernels() == ["portable"] and decoder.kernel() == "portable"
        assert not decoder.use_kernel("avx2")
        assert not decoder.use_isa("avx1024")
        if "avx2" in levels:  # no VNNI of either width below avx2_vnni
            assert decoder.use_isa("avx2")
            assert decoder.kernels() == ["avx2", "portable"] and decoder.kernel() == "avx2"
    finally:
        decoder.use_isa("auto")
    assert decoder.isa() == start


@pytest.mark.parametrize("cap", ["avx2_vnni", "avx2", "AVX2", "baseline", "nonsense"])
def test_the_environment_caps_the_vector_level(cap: str) -> None:
    """SEQSERVE_NATIVE_ISA caps the level when the library loads (never above the CPU's; a CPU
    without AVX-VNNI capped at avx2_vnni runs avx2); an unknown name caps nothing."""
    code = "from core.native import decoder as d; print(d.isa(), d.kernel())"
    env = {**os.environ, "SEQSERVE_NATIVE_ISA": cap}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    out = run.stdout.split()
    assert ("SEQSERVE_NATIVE_ISA='nonsense' is none of" in run.stderr) == (cap == "nonsense")
    levels = decoder.isas()  # best first
    names = decoder.ISA_NAMES  # lowest first
    if cap.lower() in names:  # the best level this CPU runs at or below the cap
        want = next(v for v in levels if names.index(v) <= names.index(cap.lower()))
    else:
        want = levels[0]
    assert out[0] == want
    fastest = {
        "avx512": ("amx", "avx512_vnni", "avx_vnni", "avx2"),
        "avx2_vnni": ("avx_vnni",),
        "avx2": ("avx2",),
        "baseline": ("portable",),
    }
    assert out[1] in fastest[want]


@pytest.mark.parametrize("seed", range(4))
def test_ranking_is_the_same_at_every_vector_level(seed: int) -> None:
    """The native ranking (a vector scan per level, a scalar one after it) gives exactly
    `best_candidates`' order at every level: peaked, tied, -inf and NaN rows, vocabularies
    that end mid-vector."""
    from core.translation.search import best_candidates

    rng = np.random.default_rng(seed)
    requests, k, vocab = 3, 2, int(rng.integers(5, 900))
    lp = (rng.standard_normal((requests, k, vocab)) * 4).astype(np.float32)
    lp[0, 0, : vocab // 3] = -np.inf
    lp[1, :, vocab // 4 : vocab // 2] = lp[1, 0, vocab // 4]  # ties
    lp[2][rng.random((k, vocab)) < 0.1] = np.nan
    lp[2, 1, rng.integers(0, vocab, 3)] += 30  # peaked
    cum = rng.standard_normal((requests, k))
    n = int(rng.integers(1, 9))
    want = best_candidates(lp, cum, n)
    rows = lp.reshape(requests * k, vocab)
    try:
        for level in decoder.isas():
            assert decoder.use_isa(level)
            index, score = decoder.best_candidates(rows, cum, np.arange(requests) * k, n)
            for r, (top, scores) in enumerate(want):
                np.testing.assert_array_equal(index[r], top, err_msg=level)
                np.testing.assert_array_equal(score[r], scores, err_msg=level)
    finally:
        decoder.use_isa("auto")


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(1, 16, 8), (3, 100, 50), (8, 256, 768), (17, 70, 33), (40, 1024, 96), (16, 64, 32)],
)
def test_int8_product_is_the_float_product_within_int8_error(
    kernel: str, m: int, k: int, n: int
) -> None:
    rng = np.random.default_rng(m * k + n)
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.1
    b = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0] = np.abs(x[0])  # a row with no negative value (its zero point is 0)
    if m > 2:
        x[1] = 0.0  # an all-zero row
        x[2, 5 % k] = 40.0  # one outlier: the row's scale follows it
    got = decoder.Int8Matrix(w, b)(x)
    want = x @ w + b
    assert got.shape == (m, n)
    # each factor rounded to 1/255 and 1/254 of its range: a few per cent of |x| |w|
    bound = 0.02 * np.abs(x).max(1, keepdims=True) * np.abs(w).max(0) * np.sqrt(k) + 1e-6
    assert (np.abs(got - want) <= bound).all()
    if m > 2:
        np.testing.assert_array_equal(got[1], b)  # zeros quantise exactly


def test_every_kernel_gives_the_same_products() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 200)).astype(np.float32)
    b = rng.standard_normal(200).astype(np.float32)
    x = rng.standard_normal((37, 300)).astype(np.float32)
    matrix = decoder.Int8Matrix(w, b)
    outputs = {}
    for name in decoder.kernels():
        assert decoder.use_kernel(name)
        outputs[name] = matrix(x)
    decoder.use_kernel("auto")
    assert "portable" in outputs
    for name, out in outputs.items():  # the int32 sums are exact; only the scaling may round
        np.testing.assert_allclose(out, outputs["portable"], rtol=1e-6, atol=1e-5, err_msg=name)
    assert not decoder.use_kernel("no such kernel")
