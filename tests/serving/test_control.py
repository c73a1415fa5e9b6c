"""Model control modes (explicit, poll) and graceful shutdown, against real servers."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, native_built
from tests.serving.model_factory import AFFINE_CONFIG, SLOW_CONFIG, add_model, affine, slow
from tests.serving.v2 import call_error, held, outputs, request, scrape, stub

X = np.ones((1, 4), np.float32)


def _index(s: pb_grpc.GRPCInferenceServiceStub) -> dict[str, tuple[str, str, str]]:
    reply = s.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5)
    return {m.name: (m.version, m.state, m.reason) for m in reply.models}


def test_explicit_mode_load_unload(tmp_path: Path) -> None:
    repo = tmp_path / "model_repository"
    add_model(repo, "a", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    add_model(repo, "b", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    server = ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "a")
    try:
        server.wait_ready()
        channel, s = stub(server.target)
        with channel:
            assert _index(s)["b"] == ("", "UNAVAILABLE", "not loaded")
            err = call_error(s.ModelInfer, request("b", x=X), timeout=5)
            assert err.code() is grpc.StatusCode.UNAVAILABLE
            s.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="b"), timeout=30)
            assert _index(s)["b"][1] == "READY"
            outputs(s.ModelInfer(request("b", x=X), timeout=5))
            s.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="b"), timeout=30)
            assert not s.ModelReady(pb.ModelReadyRequest(name="b"), timeout=5).ready
            # A config override in the load request (Triton's "config" parameter).
            override = json.dumps(
                {
                    "max_batch_size": 2,
                    "platform": "onnxruntime_onnx",
                    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
                    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}],
                }
            )
            load = pb.RepositoryModelLoadRequest(model_name="b")
            load.parameters["config"].string_param = override
            s.RepositoryModelLoad(load, timeout=30)
            cfg = s.ModelConfig(pb.ModelConfigRequest(name="b"), timeout=5).config
            assert cfg.max_batch_size == 2 and [o.name for o in cfg.output] == ["y"]
            # Names that reach outside the repository are refused.
            err = call_error(
                s.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="../a"), timeout=5
            )
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            err = call_error(
                s.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="zzz"), timeout=5
            )
            assert err.code() is grpc.StatusCode.NOT_FOUND
    finally:
        assert server.terminate() == 0


def _wait(predicate, timeout: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _poll_server(repo: Path, frontend: str = "python") -> ServerProcess:
    server = ServerProcess(
        repo,
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.3",
        "--frontend",
        frontend,
    )
    try:
        server.wait_ready()
    except Exception:
        server.terminate()
        raise
    return server


@pytest.mark.parametrize("frontend", ["python", "native"])
def test_poll_mode_picks_up_versions_and_removals(tmp_path: Path, frontend: str) -> None:
    if frontend == "native":
        native_built()
    repo = tmp_path / "model_repository"
    model_dir = add_model(repo, "a", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    server = _poll_server(repo, frontend)
    try:
        channel, s = stub(server.target)
        with channel:
            assert s.ModelInfer(request("a", x=X), timeout=5).model_version == "1"
            # A new version appears atomically (written aside, then renamed in).
            affine(tmp_path / "staging" / "model.onnx")
            shutil.move(str(tmp_path / "staging"), str(model_dir / "2"))
            _wait(lambda: s.ModelInfer(request("a", x=X), timeout=5).model_version == "2")
            assert _index(s)["a"][:2] == ("2", "READY")
            # A new model appears (written aside and renamed in, so no poll sees it half
            # written: that case is the next test's); a removed model goes away.
            add_model(
                tmp_path / "staging-b", "b", AFFINE_CONFIG.format(scheduling="", extra=""), affine
            )
            shutil.move(str(tmp_path / "staging-b" / "b"), str(repo / "b"))
            _wait(lambda: s.ModelReady(pb.ModelReadyRequest(name="b"), timeout=5).ready)
            shutil.rmtree(repo / "b")
            _wait(lambda: "b" not in _index(s))
    finally:
        assert server.terminate() == 0


def test_poll_mode_reloads_a_model_file_rewritten_in_place(tmp_path: Path) -> None:
    """A poll that catches model.onnx half written marks the model UNAVAILABLE; once the file
    is whole, the next poll loads it (poll compares every file's size and mtime)."""
    repo = tmp_path / "model_repository"
    model_dir = add_model(repo, "a", AFFINE_CONFIG.format(scheduling="", extra=""))
    (model_dir / "1").mkdir()
    (model_dir / "1" / "model.onnx").write_bytes(b"half a model")
    server = _poll_server(repo)
    try:
        channel, s = stub(server.target)
        with channel:
            assert _index(s)["a"][1] == "UNAVAILABLE"
            affine(tmp_path / "whole.onnx")
            (model_dir / "1" / "model.onnx").write_bytes((tmp_path / "whole.onnx").read_bytes())
            _wait(lambda: s.ModelReady(pb.ModelReadyRequest(name="a"), timeout=5).ready)
            y = outputs(s.ModelInfer(request("a", x=X), timeout=5))["y"]
            np.testing.assert_allclose(y, 2 * X + 1)
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize("frontend", ["python", "native"])
def test_in_place_reload_keeps_the_latency_series(tmp_path: Path, frontend: str) -> None:
    """The retired instance of a version reloaded in place must not take the new instance's
    histogram series with it: they share the (model, version) labels."""
    if frontend == "native":
        native_built()
    repo = tmp_path / "model_repository"
    model_dir = add_model(repo, "a", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    server = _poll_server(repo, frontend)
    key = ("seqserve_request_duration_seconds_count", "model=a,version=1")

    def served() -> int:
        stats = s.ModelStatistics(pb.ModelStatisticsRequest(name="a"), timeout=5)
        return stats.model_stats[0].inference_count

    try:
        channel, s = stub(server.target)
        with channel:
            for _ in range(3):
                outputs(s.ModelInfer(request("a", x=X), timeout=5))
            assert scrape(server.metrics_url)[key] == 3
            affine(tmp_path / "new.onnx")  # the same graph, a new file: version 1 reloads
            time.sleep(0.05)  # a new mtime even on a coarse clock
            shutil.copy(tmp_path / "new.onnx", model_dir / "1" / "model.onnx")
            _wait(lambda: served() == 0)  # a new instance (fresh statistics) serves
            time.sleep(1.0)  # the retired instance drains and is released
            assert key in scrape(server.metrics_url), "the latency series vanished"
            outputs(s.ModelInfer(request("a", x=X), timeout=5))
            assert scrape(server.metrics_url)[key] >= 1
    finally:
        assert server.terminate() == 0


async def _sigterm_while_held(server: ServerProcess) -> list | None:
    """SIGTERM once the server holds three calls; their results, or None if the setup missed.

    Full batches (4 rows, so they cannot merge) run one after another: one runs, two queue
    behind it. A call the server has not yet received when SIGTERM lands is refused, rightly,
    so a fixed sleep before the signal loses on a slow machine; the server's own count of held
    requests says when all three are in. If they all end before that count is seen, the
    attempt proves nothing (and no signal was sent): the caller tries again.
    """
    full = np.zeros((4, 256, 256), np.float32)
    async with grpc.aio.insecure_channel(server.target) as ch:
        s = pb_grpc.GRPCInferenceServiceStub(ch)
        calls = [
            asyncio.ensure_future(s.ModelInfer(request("slow", x=full), timeout=30))
            for _ in range(3)
        ]
        if not await held(server.metrics_url, "slow", 3, calls):
            missed = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, pb.ModelInferResponse) for r in missed), missed
            return None
        server.proc.terminate()  # SIGTERM while the calls are queued or running
        return await asyncio.gather(*calls, return_exceptions=True)


@pytest.mark.parametrize("frontend", ["python", "native"])
def test_sigterm_finishes_in_flight_calls(tmp_path: Path, frontend: str) -> None:
    if frontend == "native":
        native_built()
    repo = tmp_path / "model_repository"
    add_model(repo, "slow", SLOW_CONFIG.format(queue=8), slow)
    server = ServerProcess(repo, "--frontend", frontend)
    try:
        server.wait_ready()
        for _ in range(5):  # on a loaded machine the calls may end before they are seen held
            results = asyncio.run(_sigterm_while_held(server))
            if results is not None:
                break
        assert results is not None, "five tries never saw the server hold the three calls"
        assert all(isinstance(r, pb.ModelInferResponse) for r in results), results
    finally:
        code = server.terminate()
    assert code == 0
    assert "draining" in server.output()


async def _one_held(server: ServerProcess, x: np.ndarray) -> asyncio.Future:
    channel = grpc.aio.insecure_channel(server.target)
    s = pb_grpc.GRPCInferenceServiceStub(channel)
    call = asyncio.ensure_future(s.ModelInfer(request("slow", x=x), timeout=60))
    assert await held(server.metrics_url, "slow", 1, [call])
    server.proc.terminate()
    try:
        return await asyncio.gather(call, return_exceptions=True)
    finally:
        await channel.close()


@pytest.mark.slow
def test_model_drain_is_bounded_by_the_grace_period(tmp_path: Path) -> None:
    """A batch that runs far longer than the grace period (a minute or so here) does not
    hold the exit: calls get the grace period (1 s), the models what is left of it (at least
    5 s), then the server says so and exits 1. (The warm-up sends one row: it is quick.)"""
    repo = tmp_path / "model_repository"
    add_model(
        repo,
        "slow",
        SLOW_CONFIG.replace("256, 256", "-1, 1024").format(queue=8),
        lambda p: slow(p, size=1024, repeats=800, rows="n"),
    )
    server = ServerProcess(repo, "--frontend", "python", "--grace-period-secs", "1")
    try:
        server.wait_ready(timeout=180)
        start = time.monotonic()
        asyncio.run(_one_held(server, np.zeros((1, 1024, 1024), np.float32)))
        code = server.proc.wait(30)
        took = time.monotonic() - start
    finally:
        server.terminate()
    assert code == 1, server.output()
    assert took < 20, f"the drain took {took:.1f} s"
    assert "models did not drain in" in server.output()


@pytest.mark.slow
def test_health_is_not_serving_until_models_are_loaded(tmp_path: Path) -> None:
    from serving.probe import check

    repo = tmp_path / "model_repository"
    warmup = """
model_warmup [{
  name: "long" batch_size: 1 count: 40
  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 256, 256 ] zero_data: true } }
}]
"""
    add_model(repo, "slow", SLOW_CONFIG.format(queue=8) + warmup, slow)
    server = ServerProcess(repo)
    try:
        seen = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, status = check(server.target, timeout=0.5)
            seen.add(status)
            if code == 0:
                break
            time.sleep(0.05)
        assert "NOT_SERVING" in seen and status == "SERVING"
        channel, s = stub(server.target)
        with channel:
            assert s.ModelReady(pb.ModelReadyRequest(name="slow"), timeout=5).ready
    finally:
        server.terminate()
