"""Parallel corpora for the translator: Multi30k, the built-in numbers, or files.

`load_corpus(data, src, tgt, ...)` returns {"train", "val", "test"} lists of (source, target)
sentence pairs, whatever the source:
- "multi30k": the Multi30k task-1 raw files (gz), found or downloaded by `sources.py`;
  test is `test_split` (test_2016_flickr by default).
- "numbers": the generated corpus of `numbers.py`, with a fourth split, "small" (0 to 1000).
- a path: `X.tsv` (source TAB target per line, optionally .gz), or a prefix `X` with aligned
  `X.<src>` and `X.<tgt>` files (optionally .gz), or a folder holding `train.<lang>` plus
  optional `val.<lang>` / `test.<lang>` files. Validation and test pairs missing from a path
  are carved from the training pairs (seeded, 2% each, at most 1000).
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

from training.data.numbers import numbers_corpus
from training.data.sources import dataset_file

Pair = tuple[str, str]
Corpus = dict[str, list[Pair]]

MULTI30K_LANGS = ("de", "en", "fr")
MULTI30K_SPLITS = (
    "train",
    "val",
    "test_2016_flickr",
    "test_2017_flickr",
    "test_2017_mscoco",
    "test_2018_flickr",
)


class CorpusError(ValueError):
    """A corpus that cannot be read: missing files, misaligned lines, unknown languages."""


def read_lines(path: Path) -> list[str]:
    """UTF-8 lines without their line ends; `.gz` files are decompressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


def aligned(src_path: Path, tgt_path: Path) -> list[Pair]:
    """Pairs from two aligned files; their line counts must match."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise CorpusError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}")
    return list(zip(src, tgt, strict=True))


def read_tsv(path: Path) -> list[Pair]:
    pairs = []
    for i, line in enumerate(read_lines(path), 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise CorpusError(
                f"{path}:{i}: expected 'source<TAB>target', got {len(fields)} field(s)"
            )
        pairs.append((fields[0], fields[1]))
    return pairs


def multi30k(src: str, tgt: str, split: str, allow_download: bool = True) -> list[Pair]:
    """One Multi30k split, e.g. multi30k("de", "en", "val")."""
    for lang in (src, tgt):
        if lang not in MULTI30K_LANGS:
            raise CorpusError(
                f"Multi30k has no {lang!r} side here (languages: {', '.join(MULTI30K_LANGS)})"
            )
    if split not in MULTI30K_SPLITS:
        raise CorpusError(
            f"unknown Multi30k split {split!r} (splits: {', '.join(MULTI30K_SPLITS)})"
        )
    return aligned(
        dataset_file(f"multi30k/{split}.{src}.gz", allow_download),
        dataset_file(f"multi30k/{split}.{tgt}.gz", allow_download),
    )


def _find(stem: Path, lang: str) -> Path | None:
    for candidate in (Path(f"{stem}.{lang}"), Path(f"{stem}.{lang}.gz")):
        if candidate.is_file():
            return candidate
    return None


def _carve(pairs: list[Pair], n: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Take n seeded random pairs out; return (rest, taken)."""
    if len(pairs) < 3 * n:
        raise CorpusError(f"only {len(pairs)} pairs: too few to carve validation/test sets")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    taken = set(order[:n])
    return ([p for i, p in enumerate(pairs) if i not in taken], [pairs[i] for i in sorted(taken)])


def from_path(path: Path, src: str, tgt: str, seed: int) -> Corpus:
    splits: dict[str, list[Pair]] = {}
    if path.is_dir():
        for name in ("train", "val", "test"):
            s, t = _find(path / name, src), _find(path / name, tgt)
            if s and t:
                splits[name] = aligned(s, t)
        if "train" not in splits:
            raise CorpusError(f"{path}: no train.{src} and train.{tgt} (optionally .gz)")
    elif path.is_file() and ".tsv" in path.suffixes:
        splits["train"] = read_tsv(path)
    elif (s := _find(path, src)) and (t := _find(path, tgt)):
        splits["train"] = aligned(s, t)
    else:
        raise CorpusError(
            f"{path}: not a TSV file, a folder with train.{src}/train.{tgt}, or a "
            f"prefix with {path.name}.{src} and {path.name}.{tgt}"
        )
    n = min(1000, max(1, len(splits["train"]) // 50))  # 2%, at least 1, at most 1000
    for name, salt in (("val", 1), ("test", 2)):
        if name not in splits:
            splits["train"], splits[name] = _carve(splits["train"], n, seed + salt)
    return {k: splits[k] for k in ("train", "val", "test")}


def load_corpus(
    data: str,
    src: str,
    tgt: str,
    seed: int = 0,
    test_split: str = "test_2016_flickr",
    numbers_train: int = 30000,
    numbers_heldout: int = 1000,
    numbers_max_digits: int = 6,
    extra_sources: tuple[str, ...] = (),
) -> Corpus:
    """{"train", "val", "test"} pairs of the named corpus (see the module docstring).
    `extra_sources` (Multi30k only) adds training pairs from other source languages into the
    same targets: Multi30k's captions are translated into each language, so the English side
    repeats with a French source, say. Validation and test stay src -> tgt."""
    if extra_sources and data != "multi30k":
        raise CorpusError("extra source languages need --data multi30k")
    if data == "numbers":
        return numbers_corpus(seed, numbers_train, numbers_heldout, numbers_max_digits, src, tgt)
    if data == "multi30k":
        train = multi30k(src, tgt, "train")
        for lang in extra_sources:
            if lang in (src, tgt):
                raise CorpusError(f"extra source {lang!r} is already a side of {src}-{tgt}")
            train += multi30k(lang, tgt, "train")
        return {
            "train": train,
            "val": multi30k(src, tgt, "val"),
            "test": multi30k(src, tgt, test_split),
        }
    path = Path(data)
    if not path.exists() and not path.parent.is_dir():
        raise CorpusError(f"--data {data!r}: not multi30k, numbers, or an existing path")
    return from_path(path, src, tgt, seed)
