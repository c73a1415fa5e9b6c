"""Write models into a Triton-style model repository, atomically.

    <repository>/<name>/config.pbtxt        Triton's ModelConfig, protobuf text format
    <repository>/<name>/<version>/...       model.onnx and sidecars

A version folder is built under a hidden temporary name inside `<repository>/<name>/` (serving and
Triton only look at numeric folder names) and renamed into place, so a server polling the
repository sees either no version or a complete one. config.pbtxt is replaced the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from google.protobuf import text_format

from export.errors import ExportError
from protos.inference.model_config_pb2 import ModelConfig

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CONFIG_FILE = "config.pbtxt"


def check_name(name: str) -> str:
    if not NAME.match(name) or len(name) > 128:
        raise ExportError(
            f"invalid model name {name!r}: it must match {NAME.pattern} (at most 128 characters)"
        )
    return name


def versions(model_dir: Path) -> list[int]:
    """The numeric version folders of a model, sorted."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _check_file_name(name: str) -> str:
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or any(p in {"..", "."} for p in parts):
        raise ExportError(f"file name {name!r} must be a relative path inside the version folder")
    return name


def _write_config(model_dir: Path, config: ModelConfig) -> None:
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=f".{CONFIG_FILE}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text_format.MessageToString(config))
        os.chmod(tmp, 0o644)
        os.replace(tmp, model_dir / CONFIG_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_version(
    repository: Path,
    name: str,
    config: ModelConfig,
    files: Mapping[str, Path | bytes],
    version: int | None = None,
    force: bool = False,
) -> Path:
    """Atomically write <repository>/<name>/<version>/{files...} and
    <repository>/<name>/config.pbtxt.

    `files` maps a file name inside the version folder to the file to copy or the bytes to write.
    version None = next free number; an existing version is refused unless `force`. The name must
    match ^[A-Za-z0-9][A-Za-z0-9_.-]*$. Files go into a temporary folder inside
    <repository>/<name>/, which is then renamed; config.pbtxt is written to a temporary file and
    os.replace'd. Returns the version folder.
    """
    check_name(name)
    if not files:
        raise ExportError(f"model {name!r}: no files to write")
    for file_name in files:
        _check_file_name(file_name)
    if version is not None and version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    existing = versions(model_dir)
    if version is None:
        version = (existing[-1] + 1) if existing else 1
    final = model_dir / str(version)
    if final.exists() and not force:
        raise ExportError(
            f"{final} exists: pass force (--force) to overwrite version {version}, "
            "or leave the version out to write the next free one"
        )
    config = ModelConfig.FromString(config.SerializeToString())  # the caller's stays untouched
    config.name = name

    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".tmp-{version}-"))
    try:
        for file_name, source in files.items():
            dest = staging / file_name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                dest.write_bytes(source)
            else:
                shutil.copyfile(source, dest)
        os.chmod(staging, 0o755)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if final.exists():  # --force: move the old version aside, then swap the new one in
        old = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".old-{version}-"))
        os.rename(final, old / "v")
    try:
        os.rename(staging, final)
    except BaseException:
        if old is not None:
            os.rename(old / "v", final)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _write_config(model_dir, config)
    return final


def read_config(model_dir: Path) -> ModelConfig:
    """Parse <model_dir>/config.pbtxt."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), ModelConfig())
    except (OSError, text_format.ParseError) as err:
        raise ExportError(f"{path}: {err}") from err
