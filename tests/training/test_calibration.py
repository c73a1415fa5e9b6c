"""Conformal calibration: biased quantile heads come out covering their levels on fresh data
from the same distribution, never crossing; the scores say what they should."""

from __future__ import annotations

import numpy as np
import pytest

from training import calibration

LEVELS = (0.1, 0.5, 0.9)


def biased_heads(rng: np.random.Generator, windows: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth ~ N(0, 2) per step; heads that say N(0.5, 0.5): too narrow and shifted up."""
    target = rng.normal(0.0, 2.0, (windows, 4, 2))  # [W, H, F]
    z = np.array([-1.2816, 0.0, 1.2816])  # standard normal quantiles of LEVELS
    quantiles = np.broadcast_to(0.5 + 0.5 * z, (windows, 4, 2, 3)).copy()  # [W, H, F, Q]
    return quantiles, target


def test_corrected_quantiles_cover_their_levels_on_fresh_windows() -> None:
    rng = np.random.default_rng(0)
    q_val, y_val = biased_heads(rng, 2000)
    q_test, y_test = biased_heads(rng, 20000)
    before = calibration.scores(q_test, y_test, LEVELS, "test")
    assert before["test_coverage_0.1"] > 0.25 and before["test_coverage_0.9"] < 0.75
    fixed = calibration.apply(q_test, calibration.offsets(q_val, y_val, LEVELS))
    after = calibration.scores(fixed, y_test, LEVELS, "test")
    for tau in LEVELS:
        assert after[f"test_coverage_{tau:g}"] == pytest.approx(tau, abs=0.02)
    assert after["test_pinball"] < before["test_pinball"]
    # the 80% interval of N(0, 2) is 2 * 1.2816 * 2 wide
    assert after["test_interval_width_0.1_0.9"] == pytest.approx(5.13, rel=0.05)


def test_offsets_are_per_step_and_per_target() -> None:
    rng = np.random.default_rng(1)
    quantiles, target = biased_heads(rng, 4000)
    target[:, 3, 1] += 10.0  # one step of one target runs high
    correction = calibration.offsets(quantiles, target, LEVELS)  # [H, F, Q]
    assert correction.shape == (4, 2, 3)
    assert np.all(correction[3, 1] > correction[0, 1] + 9)
    assert np.allclose(correction[0, 0], correction[2, 0], atol=0.3)


def test_finite_sample_ranks_are_conservative_on_both_sides() -> None:
    """Scores 1..9 (n = 9): level 0.9 takes the ceil(10 * 0.9) = 9th smallest, level 0.1 the
    floor(10 * 0.1) = 1st; the median is the median."""
    target = np.arange(1.0, 10.0).reshape(9, 1, 1)  # [W, 1, 1]
    quantiles = np.zeros((9, 1, 1, 3))
    correction = calibration.offsets(quantiles, target, LEVELS)
    assert correction[0, 0].tolist() == [1.0, 5.0, 9.0]


def test_corrected_quantiles_never_cross() -> None:
    rng = np.random.default_rng(2)
    quantiles = np.sort(rng.normal(size=(500, 3, 2, 3)), axis=-1)
    correction = rng.normal(0, 3, size=(3, 2, 3)).astype(np.float32)  # crossing offsets
    fixed = calibration.apply(quantiles, correction)
    assert np.all(np.diff(fixed, axis=-1) >= 0)
    assert np.allclose(np.sort(quantiles + correction, -1), fixed)


def test_held_out_coverage_is_measured_on_windows_the_correction_did_not_see() -> None:
    rng = np.random.default_rng(3)
    quantiles, target = biased_heads(rng, 3000)
    covered = calibration.held_out_coverage(quantiles, target, LEVELS, horizon=4)
    assert covered == pytest.approx(list(LEVELS), abs=0.03)
    # a shift between the two halves shows up: the correction of one half misses the other
    target[1500:] += 3.0
    shifted = calibration.held_out_coverage(quantiles, target, LEVELS, horizon=4)
    assert calibration.off_levels(shifted, LEVELS)


def test_pairs_are_the_symmetric_levels() -> None:
    assert calibration.pairs((0.05, 0.1, 0.5, 0.9, 0.95)) == [(0, 4), (1, 3)]
    assert calibration.pairs((0.5,)) == []


def test_too_few_windows_to_hold_out_give_nan_not_an_in_sample_figure() -> None:
    rng = np.random.default_rng(4)
    quantiles, target = biased_heads(rng, 3)
    covered = calibration.held_out_coverage(quantiles, target, LEVELS, horizon=4)
    assert all(np.isnan(c) for c in covered)
