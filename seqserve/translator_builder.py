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

from training.translator_config import resolve

PRESETS = {"default": "numbers", "tiny": "tiny"}
NAME = "translator"


def translator(repository: Path, preset: str) -> None:
    """Train on the numbers corpus and export into `repository/translator`."""
    from export.translator import export_translator
    from training.train_translator import train

    model_args, train_config = resolve(PRESETS[preset], {}, {})
    with tempfile.TemporaryDirectory(prefix="seqserve-translator-") as tmp:
        train(model_args, replace(train_config, examples=0), Path(tmp), quiet=True)
        export_translator(Path(tmp), repository, NAME)
