"""Shared fixtures: free ports, real server processes, the tool venvs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools"

# No test downloads anything: datasets come from ../shared/data (or SEQSERVE_DATA_DIR) or are
# generated; a test that needs a download serves the files itself and lifts this. Set here so
# that the servers and CLIs the tests start inherit it.
os.environ.setdefault("SEQSERVE_OFFLINE", "1")


def missing(what: str, hint: str) -> NoReturn:
    """A tool or file `make test` provides is absent: fail under `make test` (it sets
    SEQSERVE_REQUIRE_TOOLS=1, and CI runs it), so a local run means what CI means; skip in a
    bare `pytest`, naming the fix."""
    if os.environ.get("SEQSERVE_REQUIRE_TOOLS") or os.environ.get("CI"):
        pytest.fail(f"{what} missing under `make test`: {hint}")
    pytest.skip(f"{what} missing: {hint}")


# The fast lane (`make test-fast`: `-m "not slow"`) leaves out tests marked slow, and every
# test that needs a model trained by the seqserve CLI (these session fixtures cost about a
# minute together). It keeps every layer's unit tests and the contract tests, which serve
# generated models end to end on both front ends.
SLOW_FIXTURES = {"tiny_translator_checkpoint", "tiny_repository", "tiny_server"}


@pytest.hookimpl(tryfirst=True)  # before xdist's loadgroup reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            # Under `-n 2 --dist loadgroup` (make test) these run on one worker, so that the
            # session's tiny models are trained once, not once per worker.
            item.add_marker(pytest.mark.xdist_group(name="tiny"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`seqserve serve` in a subprocess on free loopback ports."""

    def __init__(
        self,
        repository: Path,
        *extra: str,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.grpc_port, self.metrics_port, self.http_port = free_port(), free_port(), free_port()
        self.target = f"127.0.0.1:{self.grpc_port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log = repository.parent / f"server-{self.grpc_port}.log"
        cmd = [
            python,
            "-m",
            "seqserve",
            "serve",
            "--model-repository",
            str(repository),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            "--http-port",
            str(self.http_port),
            "--grace-period-secs",
            "5",
            *extra,
        ]
        self._log_file = self.log.open("w")
        # new_session: the server leads a process group of its own (its engines in it), as
        # under systemd, so a test can signal the whole group.
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=new_session,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        from serving.probe import check

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if check(self.target, timeout=0.5)[0] == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text()

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


@pytest.fixture
def empty_repository(tmp_path: Path) -> Path:
    repo = tmp_path / "model_repository"
    repo.mkdir()
    return repo


@pytest.fixture
def server(empty_repository: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(empty_repository)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.terminate()


def tool(name: str, exe: str = "python") -> Path:
    """An executable of a tool venv built by tests/tools/setup.sh; skip outside `make test`."""
    path = TOOLS / name / "bin" / exe
    if not path.exists():
        missing(str(path), "run `make tools` (tests/tools/setup.sh)")
    return path


def native_built() -> None:
    """Skip unless the native front end is built (`make native`, part of `make test`)."""
    if not list((ROOT / "serving" / "native").glob("_frontend*.so")):
        missing("serving/native/_frontend.so (the native front end)", "run `make native`")


@pytest.fixture(scope="module", params=["python", "native"])
def standard_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per test module and front end over the standard test repository (good and
    broken models): every contract test runs against both front ends."""
    from tests.serving.model_factory import standard_repository

    if request.param == "native":
        native_built()
    repo = standard_repository(tmp_path_factory.mktemp("std") / "model_repository")
    srv = ServerProcess(repo, "--frontend", request.param)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.terminate()


@pytest.fixture(scope="session")
def tiny_translator_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset's translator checkpoint, trained once per test session through the CLI
    (`seqserve train translator --preset tiny`). Training is seeded and deterministic on one
    thread, so these are the weights `seqserve build-repository --preset tiny` exports."""
    out = tmp_path_factory.mktemp("tiny-translator-checkpoint")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "train",
            "translator",
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def tiny_repository(
    tmp_path_factory: pytest.TempPathFactory, tiny_translator_checkpoint: Path
) -> Path:
    """The default repository with the tiny preset, built once per test session by the
    command `make serve` runs (`seqserve build-repository`). Its translator is the session's
    tiny checkpoint exported first (the same weights; build-repository keeps a model that is
    present), so the session trains that translator once, not three times."""
    repo = tmp_path_factory.mktemp("tiny") / "model_repository"
    for cmd in (
        [
            "export",
            "--checkpoint",
            str(tiny_translator_checkpoint),
            "--repository",
            str(repo),
            "--name",
            "translator",
        ],
        ["build-repository", "--repository", str(repo), "--preset", "tiny"],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "seqserve", *cmd],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return repo


@pytest.fixture(scope="session")
def tiny_server(tiny_repository: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tiny_repository)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.terminate()
