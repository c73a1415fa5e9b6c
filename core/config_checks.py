"""The rules every model config obeys, from config.pbtxt or from a Load call's override: one
validator, applied before anything is loaded, so that no config (whoever wrote it) can reach a
file outside its version folder or ask for unbounded resources."""

from __future__ import annotations

from pathlib import Path

from core.errors import ModelLoadError
from protos.inference import model_config_pb2 as mc

MAX_INSTANCES = 16  # onnxruntime sessions (or engines) per model version, over all groups
MAX_THREADS = 64  # intra_op_thread_count / inter_op_thread_count parameters
THREAD_PARAMETERS = ("intra_op_thread_count", "inter_op_thread_count")


def check_config(config: mc.ModelConfig) -> None:
    """ModelLoadError naming the field when `config` breaks a rule."""
    if config.max_batch_size < 0:
        raise ModelLoadError(f"max_batch_size: {config.max_batch_size} is negative")
    for i, group in enumerate(config.instance_group):
        if group.count < 0:
            raise ModelLoadError(f"instance_group[{i}].count: {group.count} is negative")
    instances = sum(max(g.count, 1) for g in config.instance_group)
    if instances > MAX_INSTANCES:
        raise ModelLoadError(
            f"instance_group: {instances} instances, at most {MAX_INSTANCES} per model version"
        )
    for key in THREAD_PARAMETERS:
        if key in config.parameters:
            value = config.parameters[key].string_value
            if not value.isdigit() or int(value) > MAX_THREADS:
                raise ModelLoadError(
                    f"parameters.{key}: {value!r} is not a thread count in 0..{MAX_THREADS}"
                )
    if config.default_model_filename:
        check_file_name(config.default_model_filename, "default_model_filename")


def check_file_name(name: str, what: str) -> None:
    """A file a config names is a plain name in its version folder: no separator, no '..'."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ModelLoadError(f"{what} {name!r}: must be a file name in the version folder")


def version_file(version_dir: Path, name: str, what: str) -> Path:
    """`version_dir / name`, which must resolve (symbolic links followed) inside
    `version_dir`. The messages never say whether anything outside it exists."""
    check_file_name(name, what)
    path = version_dir / name
    if not path.resolve().is_relative_to(version_dir.resolve()):
        raise ModelLoadError(f"{what} {name!r}: resolves outside the version folder")
    if not path.is_file():
        raise ModelLoadError(f"{what} {name!r}: not found in version folder {version_dir.name}")
    return path
