"""The default model repository that `make serve` serves (`seqserve build-repository`).

The repository holds one folder per model. Models are added here as the model issues land:
`forecaster_lstm` and `forecaster_gru` (built-in synthetic series) and `translator` (the built-in
`numbers` corpus). A model already present is kept, so a re-run only builds what is missing.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from seqserve.forecaster_builders import forecaster_gru, forecaster_lstm
from seqserve.translator_builder import translator

log = logging.getLogger(__name__)

# name -> builder(repository, preset). Builders import torch only when they run.
BUILDERS: dict[str, Callable[[Path, str], None]] = {
    "forecaster_lstm": forecaster_lstm,
    "forecaster_gru": forecaster_gru,
    "translator": translator,
}


def build(repository: Path, preset: str = "default") -> list[str]:
    """Build every default model missing from `repository`; return the names built."""
    repository.mkdir(parents=True, exist_ok=True)
    built = []
    for name, builder in BUILDERS.items():
        if (repository / name / "config.pbtxt").is_file():
            log.info("%s: present, kept", name)
            continue
        builder(repository, preset)
        built.append(name)
    return built


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    built = build(Path(args.repository), args.preset)
    print(f"{args.repository}: built {', '.join(built) if built else 'nothing new'}")
    return 0
