"""seqserve refuses to start with both onnxruntime distributions installed."""

from __future__ import annotations

from importlib import metadata

import pytest

from serving import runtime_check


def _fake(installed: dict[str, str]):
    def version(name: str) -> str:
        if name in installed:
            return installed[name]
        raise metadata.PackageNotFoundError(name)

    return version


def test_both_runtimes_refuse_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        runtime_check.metadata,
        "version",
        _fake({"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}),
    )
    both = r"both onnxruntime==1\.31\.1 and onnxruntime-gpu==1\.31\.1"
    with pytest.raises(SystemExit, match=both):
        runtime_check.check_single_runtime()


def test_no_runtime_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_check.metadata, "version", _fake({}))
    with pytest.raises(SystemExit, match=r"seqserve\[serve-cpu\]"):
        runtime_check.check_single_runtime()


def test_this_environment_has_exactly_one() -> None:
    assert runtime_check.check_single_runtime() == "onnxruntime==1.31.1"
