"""The model repository: Triton's layout, version policies and model control modes.

    <root>/<model>/config.pbtxt          Triton's ModelConfig in protobuf text format
    <root>/<model>/<version>/...         numeric version folders (others are ignored)

Loading runs on a thread so the server keeps serving; a model that fails to load is
UNAVAILABLE with the reason in RepositoryIndex, and every other model keeps serving. A reload
(explicit Load, or poll mode seeing a change) brings the new versions up first, then drains and
unloads the old ones, so no request is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from google.protobuf import json_format, text_format

from core.config_checks import check_config
from core.errors import InvalidInput, ModelLoadError, ModelNotFound, ModelNotReady
from protos.inference import model_config_pb2 as mc
from serving.models.base import ServedModel
from serving.models.onnx_model import OnnxModel
from serving.models.translator import TranslatorModel
from serving.settings import Settings

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# platform or backend -> the class that serves it (a dict, not an if/elif factory).
Loader = Callable[[str, int, mc.ModelConfig, Path, Settings], ServedModel]
LOADERS: dict[str, Loader] = {
    "onnxruntime_onnx": OnnxModel,
    "onnxruntime": OnnxModel,
    "seqserve_translator": TranslatorModel,
}


class State(StrEnum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class VersionEntry:
    version: int
    state: State
    reason: str = ""
    model: ServedModel | None = None


def check_name(name: str) -> str:
    """Model names are single path components: nothing outside the repository is reachable."""
    if not NAME.match(name) or name in {".", ".."}:
        raise InvalidInput(f"invalid model name {name!r}: letters, digits, '_', '.', '-' only")
    return name


def parse_version(version: str) -> int | None:
    if version == "":
        return None
    if not version.isdigit() or len(version) > 18:
        raise ModelNotFound(f"version {version!r} is not a version number")
    return int(version)


def read_config(model_dir: Path, override_json: str | None = None) -> mc.ModelConfig:
    if override_json is not None:
        try:
            config = json_format.Parse(override_json, mc.ModelConfig())
        except json_format.ParseError as err:
            raise InvalidInput(f"parameter 'config': not a valid ModelConfig JSON: {err}") from err
    else:
        path = model_dir / "config.pbtxt"
        try:
            config = text_format.Parse(path.read_text(), mc.ModelConfig())
        except (OSError, text_format.ParseError) as err:
            raise ModelLoadError(f"config.pbtxt: {err}") from err
    if config.name and config.name != model_dir.name:
        raise ModelLoadError(
            f"config.pbtxt names the model {config.name!r}, its folder is {model_dir.name!r}"
        )
    config.name = model_dir.name
    check_config(config)
    return config


def available_versions(model_dir: Path) -> list[int]:
    """Numeric version folders; names starting with 0 are ignored, as in Triton."""
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")
    )


def select_versions(config: mc.ModelConfig, versions: list[int]) -> list[int]:
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return versions
    if kind == "specific":
        return [v for v in versions if v in set(policy.specific.versions)]
    n = policy.latest.num_versions if kind == "latest" else 1
    return versions[-max(n, 1) :] if versions else []


class ModelRepository:
    """Models by name, each with its versions and their states."""

    def __init__(
        self, root: Path, settings: Settings, on_change: Callable[[str], None] | None = None
    ) -> None:
        self.root = root
        self.settings = settings
        self._models: dict[str, dict[int, VersionEntry]] = {}
        self._configs: dict[str, mc.ModelConfig] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._loading: dict[str, dict[int, VersionEntry]] = {}
        self._signatures: dict[str, tuple] = {}
        self._on_change = on_change or (lambda name: None)
        self._known: set[str] = set()  # model folders at the last scan

    # -- queries ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The model folders (those with a config.pbtxt), read from disk now; the result is
        remembered for the calls that must not touch the disk (a request for an unknown
        model, a /metrics scrape)."""
        found = (
            sorted(
                p.name for p in self.root.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file()
            )
            if self.root.is_dir()
            else []
        )
        self._known = set(found)
        return found

    def index(self, scan: bool = True) -> list[tuple[str, str, State, str]]:
        """(name, version, state, reason) for every model in the repository folder (as last
        scanned, with `scan=False`)."""
        rows = []
        known = set(self.names()) if scan else self._known
        for name in sorted(known | set(self._models)):
            entries = {**self._models.get(name, {}), **self._loading.get(name, {})}
            if not entries:
                rows.append((name, "", State.UNAVAILABLE, "not loaded"))
                continue
            for v in sorted(entries):
                e = entries[v]
                why = e.model.unavailable if e.model and e.state is State.READY else None
                rows.append(
                    (name, str(v) if v else "", State.UNAVAILABLE, why)
                    if why
                    else (name, str(v) if v else "", e.state, e.reason)
                )
        return rows

    @staticmethod
    def _serving(e: VersionEntry) -> bool:
        return e.state is State.READY and e.model is not None and e.model.unavailable is None

    def versions(self, name: str) -> list[int]:
        """The versions that can serve now."""
        return sorted(v for v, e in self._models.get(name, {}).items() if self._serving(e))

    def config(self, name: str) -> mc.ModelConfig:
        self.get(name, "")  # NOT_FOUND / UNAVAILABLE as for inference
        return self._configs[name]

    def ready_models(self) -> list[ServedModel]:
        return [
            e.model
            for entries in self._models.values()
            for e in entries.values()
            if e.state is State.READY and e.model is not None
        ]

    def is_ready(self, name: str) -> bool:
        return bool(self.versions(name))

    def get(self, name: str, version: str) -> ServedModel:
        """The model to serve `name`/`version` ("" = the latest ready version)."""
        entries = self._models.get(name)
        if not entries:
            if name in self._known:
                raise ModelNotReady(f"model '{name}' is not loaded")
            raise ModelNotFound(f"unknown model '{name}'")
        wanted = parse_version(version)
        if wanted is None:
            ready = self.versions(name)
            if not ready:
                rows = [r for r in self.index(scan=False) if r[0] == name]
                states = "/".join(sorted({state for _, _, state, _ in rows}))
                reasons = "; ".join(why for _, _, _, why in rows if why)
                raise ModelNotReady(
                    f"model '{name}' is not ready ({states}{': ' + reasons if reasons else ''})"
                )
            return entries[ready[-1]].model  # type: ignore[return-value]
        entry = entries.get(wanted)
        if entry is None:
            raise ModelNotFound(f"model '{name}' has no version {wanted}")
        if not self._serving(entry):
            why = (
                entry.model.unavailable
                if entry.model and entry.state is State.READY
                else entry.reason
            )
            state = State.UNAVAILABLE if entry.state is State.READY else entry.state
            raise ModelNotReady(
                f"model '{name}' version {wanted} is {state.value}{': ' + why if why else ''}"
            )
        return entry.model  # type: ignore[return-value]

    # -- lifecycle -------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def signature(self, name: str) -> tuple:
        """What poll mode compares: every file under the model folder (config.pbtxt, version
        folders and what they hold), by path, size and mtime. A model.onnx rewritten in
        place, or one a poll caught half written, is loaded again once it changes."""
        model_dir = self.root / name
        parts = []
        for folder, dirs, files in os.walk(model_dir):
            dirs.sort()
            for f in sorted(files):
                path = Path(folder, f)
                try:
                    st = path.stat()
                except OSError:  # removed while we walked: the next poll sees the result
                    continue
                parts.append((str(path.relative_to(model_dir)), st.st_size, st.st_mtime_ns))
        return tuple(parts)

    async def load(self, name: str, config_override: str | None = None) -> list[str]:
        """Load (or reload) a model's versions per its version policy. Returns why this
        attempt failed, if it did (empty when every wanted version is ready): a failed
        reload leaves the previous versions serving, but it is still a failure."""
        check_name(name)
        model_dir = self.root / name
        if not (model_dir / "config.pbtxt").is_file() and config_override is None:
            raise ModelNotFound(f"model '{name}' is not in the repository {self.root}")
        async with self._lock(name):
            return await self._load_locked(name, model_dir, config_override)

    async def _load_locked(self, name: str, model_dir: Path, override: str | None) -> list[str]:
        self._signatures[name] = self.signature(name)
        old = self._models.get(name, {})
        try:
            config = read_config(model_dir, override)
            loader = LOADERS.get(config.platform) or LOADERS.get(config.backend)
            if loader is None:
                raise ModelLoadError(
                    f"no loader for platform {config.platform!r} / backend "
                    f"{config.backend!r} (known: {', '.join(LOADERS)})"
                )
            wanted = select_versions(config, available_versions(model_dir))
            if not wanted:
                raise ModelLoadError("no version folder matches the version policy")
        except (ModelLoadError, OSError) as err:
            log.error("model '%s': %s", name, err)
            if not old:
                self._models[name] = {0: VersionEntry(0, State.UNAVAILABLE, str(err))}
                self._on_change(name)
            return [str(err)]
        # Old versions keep serving while the new ones load; then the two swap at once.
        new = {v: VersionEntry(v, State.LOADING) for v in wanted}
        self._loading[name] = new
        self._on_change(name)
        try:
            for entry in new.values():
                await self._load_version(name, entry, loader, config, model_dir)
        finally:
            del self._loading[name]
        failed = [
            f"version {e.version}: {e.reason}" for e in new.values() if e.state is not State.READY
        ]
        if not any(e.state is State.READY for e in new.values()) and any(
            e.state is State.READY for e in old.values()
        ):
            # A failed reload leaves the serving versions in place, as Triton does.
            log.error("model '%s': reload failed, previous versions keep serving", name)
            self._models[name] = {**new, **{v: e for v, e in old.items() if e.model}}
            self._on_change(name)
            return failed
        self._configs[name] = config
        self._models[name] = new
        self._on_change(name)
        # Replaced versions: drain their in-flight work, then release them.
        await self._retire([e for v, e in old.items() if e.model and new.get(v) is not e])
        return failed

    async def _load_version(
        self,
        name: str,
        entry: VersionEntry,
        loader: Loader,
        config: mc.ModelConfig,
        model_dir: Path,
    ) -> None:
        v = entry.version
        try:
            model = await asyncio.to_thread(
                loader, name, v, config, model_dir / str(v), self.settings
            )
            model.start()
        except ModelLoadError as err:
            entry.state, entry.reason = State.UNAVAILABLE, str(err)
            log.error("model '%s' version %d: %s", name, v, err)
        except Exception as err:
            entry.state, entry.reason = State.UNAVAILABLE, f"load failed: {err}"
            log.exception("model '%s' version %d failed to load", name, v)
        else:
            entry.model, entry.state, entry.reason = model, State.READY, ""
            model.availability_changed = lambda: self._on_change(name)
            log.info("model '%s' version %d ready", name, v)

    async def _retire(self, entries: list[VersionEntry]) -> None:
        for e in entries:
            e.state = State.UNLOADING
        await asyncio.gather(*(e.model.drain_and_close() for e in entries if e.model))

    async def unload(self, name: str) -> None:
        check_name(name)
        async with self._lock(name):
            entries = self._models.get(name)
            if not entries:
                if name in self.names():
                    return  # already unloaded
                raise ModelNotFound(f"unknown model '{name}'")
            for e in entries.values():
                e.state = State.UNLOADING
            self._on_change(name)
            await self._retire(list(entries.values()))
            del self._models[name]
            self._signatures.pop(name, None)
            self._on_change(name)
            log.info("model '%s' unloaded", name)

    async def load_all(self, names: list[str] | None = None) -> None:
        targets = self.names() if names is None else names
        await asyncio.gather(*(self.load(n) for n in targets))

    async def poll_once(self) -> None:
        """Poll mode: load new or changed models, unload removed ones."""
        present = set(self.names())
        for name in sorted(present):
            if name not in self._models or self.signature(name) != self._signatures.get(name):
                await self.load(name)
        for name in sorted(set(self._models) - present):
            await self.unload(name)

    async def close(self) -> None:
        """Unload every model, draining them side by side."""
        await asyncio.gather(*(self.unload(name) for name in list(self._models)))

    def kill(self) -> None:
        """Stop every model at once, dropping what it holds: after a drain ran out of time."""
        for entries in self._models.values():
            for e in entries.values():
                if e.model is not None:
                    e.model.kill()
