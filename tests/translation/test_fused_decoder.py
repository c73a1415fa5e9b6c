"""The fused-operator decoder step that `bench/decoder_levers.py` measures computes the
shipped step: same log-probabilities and caches as DecoderStep, for either norm layout and
every activation, from an empty cache on."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bench.fused_decoder import fused_decoder
from core.translation.graphs import decoder_outputs
from export.decoder_step import DecoderStep
from export.translator_graphs import example_inputs
from training.models.transformer import make_model
from training.translator_config import TranslatorConfig


@pytest.mark.parametrize(
    ("norm", "activation"), [("pre", "relu"), ("post", "swish"), ("pre", "gelu")]
)
@pytest.mark.parametrize("past", [0, 3])
def test_fused_step_matches_the_shipped_step(norm: str, activation: str, past: int) -> None:
    torch.manual_seed(0)
    config = TranslatorConfig(
        vocab_size=50,
        d_model=32,
        num_heads=4,
        d_ff=64,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dropout=0.0,
        max_len=32,
        norm=norm,
        activation=activation,
    )
    model = make_model(config).eval()
    step = DecoderStep(model).eval()
    session = ort.InferenceSession(
        fused_decoder(step).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    _, args = example_inputs(model, rows=3, past=past, src=4)
    args[2][0, : past // 2] = False  # a row that joined later: its first slots are padding
    args[3][2, 2:] = False  # a shorter source
    names = [i.name for i in session.get_inputs()]
    got = session.run(decoder_outputs(2), {n: a.numpy() for n, a in zip(names, args, strict=True)})
    with torch.no_grad():
        want = step(*args)
    for g, w in zip(got, want, strict=True):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4)
