"""Default-repository builder for `translator`: the built-in `numbers` corpus (German number
words -> English).

Preset "default" trains the `numbers` preset (a few minutes on 2 CPU cores, docs/translation.md);
preset "tiny" trains the `tiny` preset for a few seconds (tests: it translates roughly, with
real 10+ token outputs). Both export through `export.translator` with all its checks.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from training.translator_config import TRANSLATOR_PRESETS

# build-repository's preset -> the translator preset it trains
TRAINED_PRESET = {"default": "numbers", "tiny": "tiny"}
NAME = "translator"


def translator(repository: Path, preset: str) -> None:
    """Train on the numbers corpus and export into `repository/translator`."""
    from export.translator import export_translator
    from training.train_translator import train

    recipe = TRANSLATOR_PRESETS[TRAINED_PRESET[preset]]
    with tempfile.TemporaryDirectory(prefix="seqserve-translator-") as tmp:
        train(recipe.model, replace(recipe.train, examples=0), Path(tmp), quiet=True)
        export_translator(Path(tmp), repository, NAME)
