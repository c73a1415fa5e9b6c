"""Source-text normalisation: a per-model setting (`source_normalization` in config.pbtxt),
applied by the tokenizer to every source, in training and in serving alike.

- `none`: the text as typed (what SentencePiece's own NFKC rule does still applies). Corpora
  given by the user and imported models get this: their casing carries meaning.
- `casefold`: Unicode case folding (`str.casefold`), so `Eins`, `EINS` and `eins` are one
  input. Folding, not lowercasing: `DREISSIG` and `dreißig` both become `dreissig`, where
  `lower()` would leave them apart. The built-in numbers corpus uses it.
"""

from __future__ import annotations

from collections.abc import Callable

NORMALIZATIONS: dict[str, Callable[[str], str]] = {
    "none": lambda text: text,
    "casefold": str.casefold,
}


def normalizer(name: str) -> Callable[[str], str]:
    """The function named `name`; ValueError naming the known ones otherwise."""
    if name not in NORMALIZATIONS:
        raise ValueError(f"source_normalization {name!r} is not one of {', '.join(NORMALIZATIONS)}")
    return NORMALIZATIONS[name]
