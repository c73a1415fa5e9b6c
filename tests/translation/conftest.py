"""Session fixtures: the session's tiny translator (trained through the CLI for a few seconds
on the numbers corpus) and the tiny repository it is exported into (tests/conftest.py); both
shared by every test here. And `kernel`: each int8 kernel of the native translator in turn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from core.native import decoder

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_translator_checkpoint: Path) -> Path:
    return tiny_translator_checkpoint  # tests/conftest.py: trained once per session


@pytest.fixture(scope="session")
def tiny_metrics(tiny_checkpoint: Path) -> dict[str, Any]:
    return json.loads((tiny_checkpoint / "metrics.json").read_text())


@pytest.fixture(scope="session")
def version_dir(tiny_repository: Path) -> Path:
    return tiny_repository / "translator" / "1"


@pytest.fixture(scope="session")
def translator(version_dir: Path):  # noqa: ANN201 - core.translation.Translator
    import onnxruntime as ort

    from serving.models.onnx_step_model import load_translator

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return load_translator(version_dir, session_options=opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def torch_checkpoint(tiny_checkpoint: Path) -> tuple[Any, ...]:
    from training.train_translator import load_translator_checkpoint

    return load_translator_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="session")
def sample_sources(torch_checkpoint: tuple[Any, ...]) -> list[str]:
    """Validation sentences (numbers never seen in training)."""
    return [s for s, _ in torch_checkpoint[3]["data"]["validation_sample"][:32]]


# the vector level each kernel belongs to: run there, so that the element-wise code of every
# level is tested too (on one machine: the CPU's best level, capped)
LEVEL = {
    "amx": "avx512",
    "avx512_vnni": "avx512",
    "avx_vnni": "avx2_vnni",
    "avx2": "avx2",
    "portable": "baseline",
}


@pytest.fixture(params=decoder.kernels() if decoder else [])
def kernel(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each int8 kernel this machine can run, in turn, at its vector level; the automatic
    choices restored after."""
    assert decoder.use_isa(LEVEL[request.param])
    assert decoder.use_kernel(request.param)
    yield request.param
    decoder.use_isa("auto")
    decoder.use_kernel("auto")
