"""The joint SentencePiece tokenizer: trained on the corpus, fixed special ids, round trip."""

from __future__ import annotations

import pytest

from core.translation import Tokenizer
from training.data.numbers import numbers_corpus
from training.data.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    pairs = numbers_corpus(1, 600, 20, 6)["train"]
    return Tokenizer.from_bytes(train_tokenizer([s for p in pairs for s in p], 120))


def test_special_ids_are_fixed(tokenizer: Tokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert 40 < tokenizer.vocab_size <= 120


@pytest.mark.parametrize(
    "text",
    [
        "dreihundertzweiundvierzig",
        "three hundred and forty-two",
        "one thousand, nine hundred and ninety-nine",
        "fünf",
        "elf",
    ],
)
def test_round_trip(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert ids and all(i > 3 for i in ids)
    assert tokenizer.decode(ids) == text


def test_source_ends_with_eos_and_empty_stays_empty(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode_source("vier")[-1] == tokenizer.eos_id
    assert tokenizer.encode_source("") == [] and tokenizer.encode_source("   ") == []
    assert (
        tokenizer.decode([tokenizer.bos_id, *tokenizer.encode("vier"), tokenizer.eos_id]) == "vier"
    )


def test_saved_model_loads_from_a_file(
    tokenizer: Tokenizer, tmp_path: pytest.TempPathFactory
) -> None:
    path = tmp_path / "spm.model"
    path.write_bytes(tokenizer.sp.serialized_model_proto())
    assert Tokenizer.from_file(path).encode("sieben") == tokenizer.encode("sieben")
