"""The vocabulary-shortlist lever that `bench/decoder_levers.py` measures: the shortlisted
int8 step gives the shipped step's log-probabilities renormalised over the chosen tokens (in
their order) and the same caches, and the co-occurrence lists keep each source word's
translation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.decoder_step import restricted
from bench.shortlist import cooccurrence_shortlist, shortlist_step, union_sizes
from core.translation.graphs import decoder_outputs
from export.decoder_step import DecoderStep
from export.translator_graphs import example_inputs
from training.models.transformer import make_model
from training.translator_config import TranslatorConfig


def test_shortlisted_step_is_the_step_renormalised_over_its_tokens(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = TranslatorConfig(
        vocab_size=300,
        d_model=32,
        num_heads=4,
        d_ff=64,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dropout=0.0,
        max_len=32,
    )
    model = make_model(config).eval()
    session = ort.InferenceSession(
        str(shortlist_step(model, tmp_path)), providers=["CPUExecutionProvider"]
    )
    _, args = example_inputs(model, rows=3, past=2, src=4)
    names = [i.name for i in session.get_inputs() if i.name != "vocab_ids"]
    feeds = {n: a.numpy() for n, a in zip(names, args, strict=True)}
    with torch.no_grad():
        want = [w.numpy() for w in DecoderStep(model).eval()(*args)]
    ids = np.array([3, 250, 7, 120, 0, 299], np.int64)  # unsorted, both ends of the vocabulary
    got = session.run(decoder_outputs(2), feeds | {"vocab_ids": ids})
    assert got[0].shape == (3, len(ids))
    # int8 error only: a wrong row gathered would be off by whole nats
    np.testing.assert_allclose(got[0], restricted(want[0], ids), atol=0.05)
    assert (got[0].argmax(1) == restricted(want[0], ids).argmax(1)).all()
    for g, w in zip(got[1:], want[1:], strict=True):  # the caches: the layers' int8 error
        np.testing.assert_allclose(g, w, atol=0.05)
    whole = session.run(["log_probs"], feeds | {"vocab_ids": np.arange(300)})[0]
    # the same tokens cut from the whole vocabulary's step and renormalised
    np.testing.assert_allclose(restricted(whole, ids), got[0], atol=1e-5)


class _Words:
    """A word-level stand-in for the SentencePiece tokenizer."""

    eos_id = 1

    def __init__(self, words: list[str]) -> None:
        self.ids = {w: i + 2 for i, w in enumerate(words)}
        self.vocab_size = len(words) + 2

    def encode(self, text: str) -> list[int]:
        return [self.ids[w] for w in text.split()]


def test_cooccurrence_lists_keep_each_words_translation() -> None:
    words = _Words(["hund", "katze", "maus", "dog", "cat", "mouse", "the"])
    pairs = [
        ("hund", "the dog"),
        ("katze", "the cat"),
        ("hund katze", "the dog the cat"),
        ("maus", "the mouse"),
    ]
    per_source, common = cooccurrence_shortlist(pairs, words, per_token=2, frequent=1)
    ids = words.ids
    assert set(common) == {ids["the"], words.eos_id}
    for src, tgt in (("hund", "dog"), ("katze", "cat"), ("maus", "mouse")):
        others = {ids[o] for o in ("dog", "cat", "mouse")} - {ids[tgt]}
        assert ids[tgt] in per_source[ids[src]]
        assert not others & set(per_source[ids[src]].tolist())
    sizes, missed = union_sizes(pairs, words, (per_source, common), batch=2)
    assert missed == 0
    # "hund" + "katze" keep the, eos, dog, cat: 4; "hund katze" + "maus" add mouse
    assert sizes == [4, 5]
    _, missed = union_sizes([("maus", "the dog")], words, (per_source, common), batch=1)
    assert missed == 0.5
