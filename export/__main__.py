"""`seqserve export` (or `python -m export`): a checkpoint into a model repository.

The checkpoint's `kind` picks the exporter from EXPORTERS; each returns the version folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from export.errors import ExportError
from export.forecaster import ExportOptions, export_forecaster
from training import checkpoint


def _forecaster(args: argparse.Namespace) -> Path:
    options = ExportOptions(
        version=args.version,
        force=args.force,
        quantize=args.quantize,
        opset=args.opset,
        max_mse_increase=getattr(args, "max_mse_increase", 0.05),
    )
    return export_forecaster(Path(args.checkpoint), Path(args.repository), args.name, options)


def _translator(args: argparse.Namespace) -> Path:
    from export.translator import run_from_args  # its own imports (sacrebleu, spm) stay lazy

    return run_from_args(args)


# checkpoint kind -> exporter(args) -> version folder written
EXPORTERS: dict[str, Callable[[argparse.Namespace], Path]] = {
    "forecaster": _forecaster,
    "translator": _translator,
}


def checkpoint_kind(folder: Path) -> str:
    return str(checkpoint.load(folder)["kind"])


def run(args: argparse.Namespace) -> int:
    try:
        kind = checkpoint_kind(Path(args.checkpoint))
        exporter = EXPORTERS.get(kind)
        if exporter is None:
            raise ExportError(
                f"no exporter for checkpoint kind {kind!r} (known: {', '.join(EXPORTERS)})"
            )
        version_dir = exporter(args)
    except (ExportError, checkpoint.CheckpointError) as err:
        print(f"seqserve export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {version_dir} and {version_dir.parent / 'config.pbtxt'}")
    return 0


if __name__ == "__main__":
    from seqserve.cli import main

    sys.exit(main(["export", *sys.argv[1:]]))
