"""Every subcommand's options, their defaults and their environment variables stay what they
were when the flags began to be generated from the config dataclasses (issue 28): a change to
the command line is a change to `tests/cli_options.json`, made on purpose and reviewed.

Regenerate after an intended change: `python -m tests.test_cli_options > tests/cli_options.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

SNAPSHOT = Path(__file__).with_name("cli_options.json")
SENTINEL = "sentinel-from-the-environment"


def _subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*path, name))


ROOT = Path(__file__).resolve().parents[1]


def _plain(value: Any) -> Any:
    """A default as JSON; a path inside the checkout is written relative to it (`<root>`), so
    the snapshot holds wherever the checkout is."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | Path) and str(value).startswith(str(ROOT)):
        return "<root>" + str(value)[len(str(ROOT)) :]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _options(environ: dict[str, str]) -> dict[str, dict[str, dict[str, Any]]]:
    from seqserve.cli import build_parser

    with mock.patch.dict(os.environ, environ, clear=True):
        parser = build_parser()
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for path, sub in _subcommands(parser):
        options = {}
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            options[" ".join(action.option_strings)] = {
                "default": _plain(action.default),
                "choices": _plain(list(action.choices)) if action.choices else None,
                "required": action.required,
                "takes_value": action.nargs != 0,
            }
        table[" ".join(path) or "seqserve"] = options
    return table


def current() -> dict[str, dict[str, dict[str, Any]]]:
    """The options of every subcommand, each with the SEQSERVE_* variable that sets its
    default (found by setting every candidate variable and seeing which defaults move)."""
    plain = _options({})
    names = {
        "SEQSERVE_" + option.split()[0].lstrip("-").upper().replace("-", "_")
        for options in plain.values()
        for option in options
    }
    moved = _options(dict.fromkeys(names, SENTINEL))
    for command, options in plain.items():
        for option, spec in options.items():
            env = "SEQSERVE_" + option.split()[0].lstrip("-").upper().replace("-", "_")
            changed = moved[command][option]["default"] != spec["default"]
            spec["env"] = env if changed else None
    return plain


def test_every_option_default_and_variable_is_unchanged() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    got = current()
    assert sorted(got) == sorted(expected), "subcommands differ"
    for command in expected:
        assert got[command] == expected[command], f"`{command}` options differ"


if __name__ == "__main__":
    json.dump(current(), sys.stdout, indent=1, sort_keys=True)
    print()
