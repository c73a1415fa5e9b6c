"""Self-describing checkpoints: DIR/checkpoint.pt holds everything that rebuilds the model.

    {"kind": "forecaster", "model_args": {...}, "train_config": {...}, "state_dict": {...},
     "data": {...}, "epoch": int, "metrics": {...}}

`kind` says which exporter takes it (export/__main__.py EXPORTERS). Loading uses
`weights_only=True`: only tensors and plain Python values, no pickled code.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch

FILE = "checkpoint.pt"
T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read."""


def plain(config: Any) -> dict[str, Any]:
    """A frozen dataclass as a dict of plain values (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def rebuild(cls: type[T], args: dict[str, Any]) -> T:
    """The dataclass back from `plain`, lists turned into tuples where the field is a tuple."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(args) - set(fields)
    if unknown:
        raise CheckpointError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


def save(folder: Path, payload: dict[str, Any]) -> Path:
    """Write DIR/checkpoint.pt atomically; `payload` must carry `kind`."""
    assert "kind" in payload, "a checkpoint says what kind of model it holds"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{FILE}.")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, folder / FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / FILE


def load(folder: Path) -> dict[str, Any]:
    path = Path(folder) / FILE if Path(folder).is_dir() else Path(folder)
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {FILE} (train one with `seqserve train`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint: {err}") from err
    if not isinstance(payload, dict) or "kind" not in payload:
        raise CheckpointError(f"{path}: not a seqserve checkpoint (no 'kind')")
    return payload
