"""The built-in `numbers` corpus: numbers written out in words, e.g. German -> English
"dreihundertzweiundvierzig" -> "three hundred and forty-two" (num2words).

Numbers are drawn with a uniform number of digits (1..max_digits), so small numbers are as
common as large ones. Training draws first, so it holds every small number (the building blocks
of the others); validation and test numbers are disjoint from training and from each other: the
test set measures translation of numbers never seen in training.
"""

from __future__ import annotations

import random

from num2words import num2words

Pair = tuple[str, str]


def number_words(n: int, lang: str) -> str:
    """`n` in words in language `lang` (a num2words code: de, en, fr, ...)."""
    return num2words(n, lang=lang)


def draw_numbers(rng: random.Random, count: int, max_digits: int, taken: set[int]) -> list[int]:
    """`count` distinct numbers not in `taken` (which grows), digits uniform in 1..max_digits;
    digit counts whose numbers are used up are skipped."""
    out: list[int] = []
    full: set[int] = set()
    while len(out) < count:
        if len(full) == max_digits:
            raise ValueError(
                f"cannot draw {count} more distinct numbers of up to {max_digits} digits"
            )
        digits = rng.randint(1, max_digits)
        lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
        for _ in range(20):
            n = rng.randint(lo, hi)
            if n not in taken:
                taken.add(n)
                out.append(n)
                break
        else:
            full.add(digits)
    return out


def numbers_corpus(
    seed: int, train: int, heldout: int, max_digits: int, src: str = "de", tgt: str = "en"
) -> dict[str, list[Pair]]:
    """{"train", "val", "test"}: disjoint (source words, target words) pairs."""
    rng = random.Random(seed)
    taken: set[int] = set()
    splits = {}
    for name, size in (("train", train), ("val", heldout), ("test", heldout)):
        numbers = draw_numbers(rng, size, max_digits, taken)
        splits[name] = [(number_words(n, src), number_words(n, tgt)) for n in numbers]
    return {k: splits[k] for k in ("train", "val", "test")}
