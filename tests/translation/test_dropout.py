"""The translator's CPU dropout: a Bernoulli mask at the configured rate, inverted scaling,
a backward pass through the same mask, seeded, and nothing at all in eval mode."""

from __future__ import annotations

import pytest
import torch

from training.models.dropout import Dropout
from training.models.transformer import TranslatorConfig, make_model


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drops_at_the_rate_and_keeps_the_mean(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(400, 1001)  # an odd element count: the last 64-bit draw is only partly used
    y = Dropout(p).train()(x)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - p) < 0.004  # 400k Bernoulli draws: the standard error is below 0.001
    zero, kept = torch.unique(y).tolist()
    assert zero == 0.0 and kept == pytest.approx(1 / (1 - p), rel=1e-4)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.01)


def test_masks_are_independent_between_elements_and_calls() -> None:
    torch.manual_seed(0)
    d = Dropout(0.5).train()
    a, b = d(torch.ones(200_000)) > 0, d(torch.ones(200_000)) > 0
    assert abs(float((a & b).float().mean()) - 0.25) < 0.01  # two calls: independent masks
    assert abs(float((a[:-1] & a[1:]).float().mean()) - 0.25) < 0.01  # neighbours: independent


def test_backward_goes_through_the_same_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 5, 16, requires_grad=True)
    y = Dropout(0.2).train()(x)
    y.backward(torch.ones_like(y))
    mask_scale = torch.where(y != 0, y / x.detach(), torch.zeros_like(y))
    assert torch.allclose(x.grad, mask_scale, atol=1e-5)
    assert y.dtype == x.dtype and y.shape == x.shape


def test_seeded_and_inert_in_eval() -> None:
    x = torch.randn(3, 7, 32)
    d = Dropout(0.1).train()
    torch.manual_seed(5)
    first = d(x)
    torch.manual_seed(5)
    assert torch.equal(first, d(x))
    assert d.eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_the_translator_uses_it_everywhere() -> None:
    model = make_model(
        TranslatorConfig(
            vocab_size=40,
            d_model=32,
            num_heads=4,
            d_ff=64,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dropout=0.1,
            attention_dropout=0.2,
            max_len=32,
        )
    )
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout | Dropout)]
    assert drops and all(isinstance(m, Dropout) for m in drops)
    assert sorted({m.p for m in drops}) == [0.1, 0.2]
