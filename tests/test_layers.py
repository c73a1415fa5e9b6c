"""Layers import one way: `core` imports no layer and no torch, onnx, onnxruntime or grpc;
training, export and serving import `core`; export imports training (it loads checkpoints);
serving imports neither; `seqserve` (the CLI and the train-then-export pipelines) sits above
all (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "core": {
        "training",
        "export",
        "serving",
        "seqserve",
        "bench",
        "torch",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "grpc",
    },
    "training": {"export", "serving", "seqserve", "bench"},
    "export": {"serving", "seqserve", "bench"},
    "serving": {"training", "export", "seqserve", "bench"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement names, anywhere in the file (lazy ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_one_way(layer: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        if path.name != "__main__.py"  # `python -m <layer>` hands over to the CLI above
        for line, module in _imports(path)
        if module.split(".")[0] in FORBIDDEN[layer]
    ]
    assert not wrong, f"{layer}/ imports what it must not:\n" + "\n".join(wrong)
