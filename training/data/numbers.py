"""The built-in `numbers` corpus: numbers written out in words, e.g. German -> English
"dreihundertzweiundvierzig" -> "three hundred and forty-two" (num2words).

- **small** (0 to SMALL, and the short forms `hundert`, `tausend`): what people type first.
  Training holds each of them several times (SMALL_COPIES; once among 60,000 pairs was not
  enough: `eins` came out as "one thousand and one", and five times left round hundreds such
  as `dreihundert` wrong), and they are scored on their own, apart from the generalisation
  test.
- **val, test**: numbers above SMALL with a uniform number of digits (up to `max_digits`),
  disjoint from training and from each other: translation of numbers never seen.
- **train**: distinct numbers above SMALL, half drawn the same way and half with zeros inside
  made common (each later digit 0 half the time: the uniform draw makes `600022` or `7909`
  rare, and those were the generalisation test's errors), plus the small ones.
"""

from __future__ import annotations

import random

from num2words import num2words

Pair = tuple[str, str]

SMALL = 1000  # every number 0..SMALL is in training and in the "small" split
# copies of each small number in training, by digit count: the fewer numbers of a length, the
# more copies, so that every length of short input is common (10 single digits among 70,000
# pairs, 10 times each, still left `null` wrong)
SMALL_COPIES = {1: 50, 2: 20, 3: 10, 4: 10}
# what people type for these besides num2words' form (einhundert, eintausend)
SHORT_FORMS = {100: "hundert", 1000: "tausend"}


def number_words(n: int, lang: str) -> str:
    """`n` in words in language `lang` (a num2words code: de, en, fr, ...)."""
    return num2words(n, lang=lang)


def draw_numbers(
    rng: random.Random, count: int, max_digits: int, taken: set[int], sparse: bool = False
) -> list[int]:
    """`count` distinct numbers not in `taken` (which grows), digits uniform in 1..max_digits;
    digit counts whose numbers are used up are skipped. `sparse`: each digit after the first is
    0 half the time (else 1 to 9), so that zeros inside a number are common."""
    out: list[int] = []
    full: set[int] = set()
    while len(out) < count:
        if len(full) == max_digits:
            raise ValueError(
                f"cannot draw {count} more distinct numbers of up to {max_digits} digits"
            )
        digits = rng.randint(1, max_digits)
        if digits in full:
            continue
        lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
        for _ in range(20):
            n = _sparse(rng, digits) if sparse else rng.randint(lo, hi)
            if n not in taken:
                taken.add(n)
                out.append(n)
                break
        else:
            full.add(digits)
    return out


def _sparse(rng: random.Random, digits: int) -> int:
    """A number of `digits` digits whose later digits are 0 half the time."""
    n = rng.randint(0 if digits == 1 else 1, 9)
    for _ in range(digits - 1):
        n = 10 * n + (0 if rng.random() < 0.5 else rng.randint(1, 9))
    return n


def drawn_numbers(seed: int, train: int, heldout: int, max_digits: int) -> dict[str, list[int]]:
    """{"train", "val", "test", "small"}: the numbers of each split (module docstring)."""
    rng = random.Random(seed)
    small = list(range(SMALL + 1))
    taken = set(small)
    sparse = train // 2
    drawn = {
        name: draw_numbers(rng, size, max_digits, taken)
        for name, size in (("train", train - sparse), ("val", heldout), ("test", heldout))
    }
    drawn["train"] += draw_numbers(rng, sparse, max_digits, taken, sparse=True)
    drawn["train"] += [n for n in small for _ in range(copies(n))]
    rng.shuffle(drawn["train"])
    return {**drawn, "small": small}


def numbers_corpus(
    seed: int, train: int, heldout: int, max_digits: int, src: str = "de", tgt: str = "en"
) -> dict[str, list[Pair]]:
    """{"train", "val", "test", "small"}: (source words, target words) pairs; German sources
    also get SHORT_FORMS in "small" and in training."""
    words: dict[int, Pair] = {}

    def pair(n: int) -> Pair:
        if n not in words:
            words[n] = (number_words(n, src), number_words(n, tgt))
        return words[n]

    drawn = drawn_numbers(seed, train, heldout, max_digits)
    corpus = {name: [pair(n) for n in numbers] for name, numbers in drawn.items()}
    if src == "de":  # the short forms, as often as their numbers
        short = [(form, number_words(n, tgt)) for n, form in SHORT_FORMS.items()]
        corpus["small"] += short
        pairs = zip(SHORT_FORMS, short, strict=True)
        corpus["train"] += [p for n, p in pairs for _ in range(copies(n))]
        random.Random(seed).shuffle(corpus["train"])
    return corpus


def copies(n: int) -> int:
    """How often small number `n` is in training."""
    return SMALL_COPIES[len(str(n))]


def exact_by_digits(numbers: list[int], hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Exact match per digit count ("1", "2", ...) of the translations of `numbers`."""
    hits: dict[int, list[bool]] = {}
    for n, hyp, ref in zip(numbers, hyps, refs, strict=True):
        hits.setdefault(len(str(n)), []).append(hyp == ref)
    return {str(d): round(sum(h) / len(h), 4) for d, h in sorted(hits.items())}
