"""Command-line flags generated from frozen config dataclasses.

A config field declared with `flag(default, help, ...)` is the one definition of its setting:
the dataclass default, the flag's name (`--field-name`, or the name given), its type and
choices (from the annotation: int, float, str, Path, a StrEnum, bool, tuples), its help text
with the default written in, and, with `env=True`, the `SEQSERVE_<FLAG>` variable that sets
the default. `add_flags` puts the fields' flags on an argparse parser; `from_flags` reads them
back into the dataclass. docs/cli.md is generated from the parser (seqserve/cli_reference.py).

    @dataclass(frozen=True)
    class Settings:
        grpc_port: int = flag(8001, "gRPC port", env=True)

    add_flags(parser, Settings)               # --grpc-port, default 8001 or $SEQSERVE_GRPC_PORT
    settings = from_flags(Settings, parser.parse_args())

With presets, `add_flags(..., defaults=preset_help(cls, presets))`: each flag named there
defaults to "not given" and its help names the presets' values instead; `from_flags(...,
base=preset)` keeps the preset's value of every field not given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "SEQSERVE_"
_KEY = "seqserve.flag"


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one field appears on the command line."""

    help: str
    name: str | None = None  # the flag without "--"; default: the field's name, "_" -> "-"
    group: str | None = None  # an argparse group's title
    metavar: str | None = None
    choices: tuple[str, ...] | None = None  # for a str field; a StrEnum field has its own
    env: bool = False  # SEQSERVE_<NAME> sets the default; a flag on the command line wins
    repeat: bool = False  # a tuple from a repeated flag (--load-model A --load-model B)
    none: str | None = None  # the word that writes an empty tuple ("none"), shown as default
    negate: bool = False  # a bool that is True by default: the flag (--no-...) sets False
    parse: Callable[[str], Any] | None = None  # the flag's text -> the field's value

    def flag_name(self, field: str) -> str:
        return self.name or field.replace("_", "-")


def flag(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field that is also a command-line flag (see the module docstring)."""
    return dataclasses.field(default=default, metadata={_KEY: Flag(help, **spec)})


def env_name(flag_name: str) -> str:
    return ENV_PREFIX + flag_name.upper().replace("-", "_")


def flags_of(cls: type) -> list[tuple[dataclasses.Field, Flag, Any]]:
    """(field, its Flag, its resolved annotation) for every flagged field of `cls`."""
    hints = typing.get_type_hints(cls)
    return [
        (f, f.metadata[_KEY], hints[f.name]) for f in dataclasses.fields(cls) if _KEY in f.metadata
    ]


def _base(hint: Any) -> Any:
    """`X | None` -> X."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner
    return hint


def _element(hint: Any) -> Any:
    """tuple[X, ...] -> X; None for anything else."""
    hint = _base(hint)
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0]
    return None


def _words(text: str, none: str | None) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip() and w.strip() != none]


def shown(value: Any, spec: Flag) -> Any:
    """A field's value as its flag writes it."""
    if isinstance(value, tuple) and not spec.repeat:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or (
            spec.none if spec.none is not None else ""
        )
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _choices(spec: Flag, hint: Any) -> list[str] | None:
    base = _base(hint)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return [m.value for m in base]
    return list(spec.choices) if spec.choices else None


class _AppendOverDefault(argparse.Action):
    """Like action="append", except that the flags replace the default (taken from the
    environment) instead of adding to it: a flag on the command line wins."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest)
        if current is self.default:
            current = None
        setattr(namespace, self.dest, [*(current or []), values])


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Mapping[str, str] | None = None,
    groups: dict[str, argparse._ArgumentGroup] | None = None,
) -> None:
    """Add a flag for every flagged field of `cls`. `defaults`: the flags default to "not
    given" (None), and each help text ends with this text for its field (the presets' values)
    instead of the dataclass default."""
    groups = {} if groups is None else groups
    for field, spec, hint in flags_of(cls):
        name = spec.flag_name(field.name)
        target: Any = parser
        if spec.group:
            if spec.group not in groups:
                groups[spec.group] = parser.add_argument_group(spec.group)
            target = groups[spec.group]
        kw: dict[str, Any] = {"dest": field.name, "help": spec.help}
        if _base(hint) is not bool and not _choices(spec, hint):
            kw["metavar"] = spec.metavar or name.upper().replace("-", "_")
        value = shown(field.default, spec)
        base = _base(hint)
        if base is bool:
            kw["action"] = "store_true"
            kw["default"] = False
        elif spec.repeat:
            kw["action"] = _AppendOverDefault if spec.env else "append"
            value = None if not field.default else list(field.default)
            if spec.env and (raw := os.environ.get(env_name(name))):
                value = [s for s in raw.split(";") if s]
            kw["default"] = value
        else:
            if choices := _choices(spec, hint):
                kw["choices"] = choices
            elif spec.parse is not None:
                kw["type"] = spec.parse
            elif base in (int, float):
                kw["type"] = base
            if spec.env:
                value = os.environ.get(env_name(name), value)
            kw["default"] = None if defaults is not None and field.name in defaults else value
        if defaults is not None and field.name in defaults:
            kw["help"] += f" ({_text(defaults[field.name])})"
        elif spec.env:
            kw["help"] += f" [env {env_name(name)}; default: {_text(value)}]"
        elif base is not bool:
            kw["help"] += f" (default: {_text(value)})"
        target.add_argument(f"--{name}", **kw)


def _text(value: Any) -> str:
    text = "''" if value == "" else str(value)
    return text.replace("%", "%%")  # argparse formats help with %


def _value(text: Any, spec: Flag, hint: Any) -> Any:
    """A flag's parsed value -> the field's value."""
    base = _base(hint)
    if spec.repeat:  # None: the flag never given
        return tuple(text or ())
    if text is None:
        return None
    element = _element(hint)
    if element is not None:
        if not isinstance(text, str):  # parsed by argparse (spec.parse)
            return tuple(text)
        return tuple(element(w) for w in _words(text, spec.none))
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return base(text)
    if base is Path:
        return Path(text) if text else None
    return text


def from_flags(cls: type, ns: argparse.Namespace, base: Any = None, **fixed: Any) -> Any:
    """The dataclass from parsed flags. With `base`, only the flags given (not None, bools
    set) replace its values; `fixed` fields are set as given."""
    given: dict[str, Any] = {}
    for field, spec, hint in flags_of(cls):
        raw = getattr(ns, field.name)
        if _base(hint) is bool:
            if base is not None and not raw:
                continue
            given[field.name] = (not raw) if spec.negate else bool(raw)
            continue
        if base is not None and raw is None:
            continue
        given[field.name] = _value(raw, spec, hint)
    given.update(fixed)
    return dataclasses.replace(base, **given) if base is not None else cls(**given)


def preset_help(cls: type, presets: Mapping[str, Any]) -> dict[str, str]:
    """For each flagged field of `cls`, the help's default text when the presets (name ->
    instance of `cls`) supply the defaults: one value when they all agree, else each one."""
    texts = {}
    for field, spec, hint in flags_of(cls):
        if _base(hint) is bool:
            continue
        values = {name: shown(getattr(p, field.name), spec) or "''" for name, p in presets.items()}
        if len(set(map(str, values.values()))) == 1:
            texts[field.name] = f"default: {next(iter(values.values()))}"
        else:
            each = ", ".join(f"{name} {value}" for name, value in values.items())
            texts[field.name] = f"default: the preset's: {each}"
    return texts
