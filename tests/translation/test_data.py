"""Corpora (numbers, files, Multi30k) and token-based batching."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from training.data.batching import collate, token_batches
from training.data.numbers import (
    SHORT_FORMS,
    SMALL,
    SMALL_COPIES,
    drawn_numbers,
    exact_by_digits,
    number_words,
    numbers_corpus,
)
from training.data.parallel import CorpusError, load_corpus, multi30k
from training.data.sources import DatasetError, dataset_file


def test_numbers_corpus_is_seeded_and_held_out() -> None:
    a = numbers_corpus(3, 500, 50, 6)
    assert a == numbers_corpus(3, 500, 50, 6)
    assert number_words(342, "de") == "dreihundertzweiundvierzig"
    assert number_words(342, "en") == "three hundred and forty-two"
    small = SMALL + 1
    short = [(words, number_words(n, "en")) for n, words in SHORT_FORMS.items()]
    assert {k: len(v) for k, v in a.items()} == {
        "train": 500 + sum(SMALL_COPIES[len(str(n))] for n in [*range(small), *SHORT_FORMS]),
        "val": 50,
        "test": 50,
        "small": small + len(short),
    }
    assert ("hundert", "one hundred") in short and set(short) <= set(a["small"])
    train, val, test = ({s for s, _ in a[k]} for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    # what people type first is in training, several times, and scored on its own
    assert [s for s, _ in a["small"][:small]] == [number_words(n, "de") for n in range(small)]
    eins = ("eins", "one")
    assert a["train"].count(eins) == SMALL_COPIES[1] and eins in a["small"]
    # the generalisation test holds only numbers above the small ones, never seen
    drawn = drawn_numbers(3, 500, 50, 6)
    assert min(drawn["test"]) > SMALL and min(drawn["val"]) > SMALL
    assert a["test"] == [(number_words(n, "de"), number_words(n, "en")) for n in drawn["test"]]


def test_exact_match_by_digit_count() -> None:
    got = exact_by_digits(
        [7, 42, 43, 1000],
        ["seven", "x", "forty-three", "one thousand"],
        ["seven", "forty-two", "forty-three", "one thousand"],
    )
    assert got == {"1": 1.0, "2": 0.5, "4": 1.0}


def test_tsv_prefix_and_folder_corpora(tmp_path: Path) -> None:
    pairs = [(f"quelle {i}", f"source {i}") for i in range(200)]
    tsv = tmp_path / "c.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    corpus = load_corpus(str(tsv), "de", "en", seed=1)
    assert {k: len(v) for k, v in corpus.items()} == {"train": 192, "val": 4, "test": 4}
    assert sorted(p for v in corpus.values() for p in v) == sorted(pairs)

    (tmp_path / "p.de").write_text("".join(f"{s}\n" for s, _ in pairs), encoding="utf-8")
    with gzip.open(tmp_path / "p.en.gz", "wt", encoding="utf-8") as f:
        f.write("".join(f"{t}\n" for _, t in pairs))
    assert load_corpus(str(tmp_path / "p"), "de", "en", seed=1) == corpus

    folder = tmp_path / "d"
    folder.mkdir()
    for split, rows in (("train", pairs[:150]), ("val", pairs[150:170]), ("test", pairs[170:])):
        (folder / f"{split}.de").write_text("".join(f"{s}\n" for s, _ in rows))
        (folder / f"{split}.en").write_text("".join(f"{t}\n" for _, t in rows))
    assert load_corpus(str(folder), "de", "en")["test"] == pairs[170:]


def test_bad_corpora_say_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "x.de").write_text("a\nb\n")
    (tmp_path / "x.en").write_text("a\n")
    with pytest.raises(CorpusError, match="2 lines but"):
        load_corpus(str(tmp_path / "x"), "de", "en")
    (tmp_path / "bad.tsv").write_text("only one field\n")
    with pytest.raises(CorpusError, match=r"bad\.tsv:1"):
        load_corpus(str(tmp_path / "bad.tsv"), "de", "en")
    with pytest.raises(CorpusError, match="not multi30k, numbers"):
        load_corpus("no/such/place", "de", "en")


def test_token_batches_respect_the_budget_and_cover_everything() -> None:
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(2, 30, 500), rng.integers(2, 30, 500)
    batches = token_batches(src, tgt, 400, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for b in batches:
        assert len(b) == 1 or len(b) * (src[b].max() + tgt[b].max()) <= 400


def test_collate_shifts_targets() -> None:
    src, tgt_in, tgt_out = collate([[5, 6, 3], [7, 3]], [[8, 9], [10]], 0, 2, 3)
    assert src.tolist() == [[5, 6, 3], [7, 3, 0]]
    assert tgt_in.tolist() == [[2, 8, 9], [2, 10, 0]]
    assert tgt_out.tolist() == [[8, 9, 3], [10, 3, 0]]


def test_multi30k_reader_on_the_shared_data() -> None:
    try:
        dataset_file("multi30k/val.de.gz", allow_download=False)
    except DatasetError:
        pytest.skip("Multi30k is not available locally (../shared/data or SEQSERVE_DATA_DIR)")
    val = multi30k("de", "en", "val", allow_download=False)
    assert len(val) == 1014
    assert all(s and t for s, t in val)
    train = multi30k("de", "en", "train", allow_download=False)
    assert len(train) == 29000
    assert train[0][1].startswith("Two young, White males are outside")
    with pytest.raises(CorpusError, match="no 'cs' side"):
        multi30k("cs", "en", "val")


def test_extra_source_languages_add_training_pairs_into_the_same_targets() -> None:
    try:
        dataset_file("multi30k/train.fr.gz", allow_download=False)
    except DatasetError:
        pytest.skip("Multi30k is not available locally (../shared/data or SEQSERVE_DATA_DIR)")
    corpus = load_corpus("multi30k", "de", "en", extra_sources=("fr",))
    train = corpus["train"]
    assert len(train) == 2 * 29000 and len(corpus["val"]) == 1014
    assert [t for _, t in train[:29000]] == [t for _, t in train[29000:]]  # the same captions
    assert train[0][0] != train[29000][0]  # German, then French
    assert corpus["val"] == multi30k("de", "en", "val")  # evaluation stays de -> en
    with pytest.raises(CorpusError, match="need --data multi30k"):
        load_corpus("numbers", "de", "en", extra_sources=("fr",))
    with pytest.raises(CorpusError, match="already a side"):
        load_corpus("multi30k", "de", "en", extra_sources=("en",))


def test_pools_spread_the_copies_of_a_pair_over_many_batches() -> None:
    rng = np.random.default_rng(0)
    src = np.array([6] * 50 + list(rng.integers(2, 20, 5000)))  # 50 copies of one pair first
    tgt = np.array([5] * 50 + list(rng.integers(2, 20, 5000)))
    for pool, spread in ((0, 1), (10, 5)):
        batches = token_batches(src, tgt, 400, np.random.default_rng(1), pool)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(src)))
        assert all(len(b) * (src[b].max() + tgt[b].max()) <= 400 for b in batches)
        with_copies = sum(1 for b in batches if (b < 50).any())
        assert with_copies <= 2 if pool == 0 else with_copies >= spread, (pool, with_copies)
