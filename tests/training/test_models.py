"""Every forecaster variant: output shapes, ordered quantiles, last-value invariance."""

from __future__ import annotations

import pytest
import torch

from training.config import ForecasterConfig
from training.models.forecasters import build_forecaster
from training.models.quantiles import monotone, pinball_loss

VARIANTS = [(arch, cell) for arch in ("segrnn", "rnn") for cell in ("gru", "lstm")]


def tiny(arch: str, cell: str, **kw: object) -> ForecasterConfig:
    base = {
        "arch": arch,
        "cell": cell,
        "input_len": 24,
        "horizon": 12,
        "n_past": 3,
        "target_index": (0, 2),
        "n_future": 2,
        "d_model": 8,
        "seg_len": 6,
        "layers": 2,
        "quantiles": (0.1, 0.5, 0.9),
    }
    return ForecasterConfig(**{**base, **kw})


@pytest.mark.parametrize(("arch", "cell"), VARIANTS)
def test_output_shapes(arch: str, cell: str) -> None:
    torch.manual_seed(0)
    model = build_forecaster(tiny(arch, cell)).eval()
    forecast, quantiles = model(torch.randn(5, 24, 3), torch.rand(5, 12, 2) - 0.5)
    assert forecast.shape == (5, 12, 2)  # [B, H, F_out]
    assert quantiles.shape == (5, 12, 2, 3)  # [B, H, F_out, Q]
    assert torch.all(quantiles[..., 1:] >= quantiles[..., :-1])


@pytest.mark.parametrize(("arch", "cell"), VARIANTS)
def test_without_future_and_quantiles(arch: str, cell: str) -> None:
    model = build_forecaster(tiny(arch, cell, n_future=0, quantiles=(), layers=1)).eval()
    forecast, quantiles = model(torch.randn(1, 24, 3), None)
    assert forecast.shape == (1, 12, 2) and quantiles is None


@pytest.mark.parametrize(("arch", "cell"), VARIANTS)
def test_a_level_shift_shifts_the_forecast(arch: str, cell: str) -> None:
    """Last-value normalisation: adding c to every past value adds c to the forecast."""
    model = build_forecaster(tiny(arch, cell, n_past=2, target_index=(0, 1))).eval()
    past, future = torch.randn(3, 24, 2), torch.rand(3, 12, 2) - 0.5
    with torch.no_grad():
        f0, q0 = model(past, future)
        f1, q1 = model(past + 5.0, future)
    torch.testing.assert_close(f1, f0 + 5.0, atol=1e-4, rtol=0)
    torch.testing.assert_close(q1, q0 + 5.0, atol=1e-4, rtol=0)


def test_segrnn_uses_past_covariates_in_ms() -> None:
    torch.manual_seed(0)
    model = build_forecaster(tiny("segrnn", "gru", target_index=(0,))).eval()
    past = torch.randn(2, 24, 3)
    changed = past.clone()
    changed[:, :12, 1] += 3.0  # move a covariate inside the window, not at its end
    with torch.no_grad():
        assert not torch.allclose(
            model(past, torch.zeros(2, 12, 2))[0], model(changed, torch.zeros(2, 12, 2))[0]
        )


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="seg_len 5 must divide"):
        tiny("segrnn", "gru", seg_len=5)
    with pytest.raises(ValueError, match="cell must be"):
        tiny("segrnn", "rnn")
    with pytest.raises(ValueError, match="quantiles must ascend"):
        tiny("rnn", "gru", quantiles=(0.9, 0.1))


def test_monotone_and_pinball() -> None:
    raw = torch.randn(100, 5)
    q = monotone(raw)
    assert torch.all(q[:, 1:] >= q[:, :-1]) and torch.equal(q[:, 0], raw[:, 0])
    levels = torch.tensor([0.1, 0.9])
    target = torch.zeros(4)
    over = pinball_loss(torch.ones(4, 2), target, levels)  # predicting 1 for a 0 target
    assert over.item() == pytest.approx((0.9 * 1 + 0.1 * 1) / 2)
