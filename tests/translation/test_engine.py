"""The served translator's engine process (`serving/models/translator_engine.py`): requests in
flight when it dies, stops or wedges fail with EngineFailed (UNAVAILABLE: retry), the model is
not ready and answers UNAVAILABLE while a new engine starts, then serves again; a stopped
engine never blocks the event loop; a version the engine cannot load is unavailable with the
reason."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import onnxruntime as ort
import pytest
from google.protobuf import text_format

from core.errors import EngineFailed, ModelNotReady, QueueFull
from serving.models.onnx_model import ModelLoadError
from serving.models.translator_engine import load_translator
from serving.repository import ModelRepository, read_config
from serving.settings import Device, FallbackPolicy, Settings

LONG = "neunhundertneunundneunzigtausendachthundertsiebenundsiebzig"


async def _break_engine_mid_flight(
    repository: Path, sig: signal.Signals, stall_s: float, cause: str
) -> None:
    changes: list[str] = []  # what the server's health service is told
    settings = Settings(model_repository=repository, engine_stall_secs=stall_s)
    repo = ModelRepository(repository, settings, changes.append)
    await repo.load("translator")
    model = repo.get("translator", "")
    try:
        assert model.engine is not None
        first = model.engine.process.pid
        in_flight = asyncio.gather(
            model.translate([model.prepare(LONG, beam_size=4, max_length=60) for _ in range(8)])
        )
        await asyncio.sleep(0)  # submitted to the engine
        os.kill(first, sig)
        with pytest.raises(EngineFailed, match="retry"):
            await asyncio.wait_for(in_flight, 30)
        with pytest.raises(ModelNotReady, match="is restarting"):
            await model.translate([model.prepare("eins", beam_size=1)])
        # Not ready meanwhile: health, ModelReady and RepositoryIndex say why.
        changes.clear()
        assert not repo.is_ready("translator")
        [(_, _, state, reason)] = [row for row in repo.index() if row[0] == "translator"]
        assert state.value == "UNAVAILABLE" and "engine process is restarting" in reason
        with pytest.raises(ModelNotReady, match="engine process is restarting"):
            repo.get("translator", "")
        deadline = time.monotonic() + 120
        while model.engine is None:
            assert time.monotonic() < deadline, "no new engine"
            await asyncio.sleep(0.05)
        assert model.engine.process.pid != first
        assert model.engine_restarts == {"exited": 0, "stalled": 0, cause: 1}
        assert repo.is_ready("translator") and repo.get("translator", "1") is model
        assert changes == ["translator"]  # told once it is back
        [again] = await model.translate([model.prepare(LONG, beam_size=1)])
        assert again.text
    finally:
        await repo.close()


@pytest.mark.parametrize(
    ("sig", "stall_s", "cause"),
    [
        (signal.SIGKILL, 60.0, "exited"),  # it dies
        (signal.SIGSTOP, 1.0, "stalled"),  # it lives, holding the requests, stepping no more
    ],
)
def test_requests_in_flight_fail_when_the_engine_dies_or_stalls_and_a_new_one_serves(
    tiny_repository: Path, sig: signal.Signals, stall_s: float, cause: str
) -> None:
    asyncio.run(_break_engine_mid_flight(tiny_repository, sig, stall_s, cause))


async def _ticker(gaps: list[float]) -> None:
    """Sleep 10 ms again and again, recording how late each wake-up was: how long the event
    loop was blocked."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(0.01)
        gaps.append(time.monotonic() - t - 0.01)


async def _stop_and_flood(repository: Path) -> None:
    settings = Settings(model_repository=repository, engine_stall_secs=2.0)
    repo = ModelRepository(repository, settings)
    await repo.load("translator")
    model = repo.get("translator", "")
    # A thousand requests: far more than the pipe to a stopped engine holds (its buffer
    # filled and the loop blocked on the next send, so the watchdog never ran). They are
    # tokenized before the ticker starts: that work is the test's, not the engine's.
    batches = [
        [model.prepare(f"{LONG} {i}", beam_size=1) for i in range(j, j + 20)]
        for j in range(0, 1000, 20)
    ]
    gaps: list[float] = []
    ticker = asyncio.ensure_future(_ticker(gaps))
    try:
        first = model.engine.process.pid
        os.kill(first, signal.SIGSTOP)
        calls = [asyncio.ensure_future(model.translate(batch)) for batch in batches]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)
        assert all(isinstance(r, EngineFailed) for r in results), results[:3]
        # (Generous, as the hardening issue asks: the defect blocked it for 17 s and more; a
        # slow hour of this shared VM has shown 0.50 s.)
        assert max(gaps) < 1.0, f"the event loop was blocked for {max(gaps):.2f} s"
        deadline = time.monotonic() + 120
        while model.engine is None:
            assert time.monotonic() < deadline, "no new engine"
            await asyncio.sleep(0.05)
        assert model.engine.process.pid != first
        assert model.engine_restarts["stalled"] == 1
        [again] = await model.translate([model.prepare("eins", beam_size=1)])
        assert again.text
    finally:
        ticker.cancel()
        await repo.close()


def test_a_stopped_engine_never_blocks_the_event_loop(tiny_repository: Path) -> None:
    asyncio.run(_stop_and_flood(tiny_repository))


async def _stop_while_idle(repository: Path) -> None:
    repo = ModelRepository(repository, Settings(model_repository=repository, engine_stall_secs=1.0))
    await repo.load("translator")
    model = repo.get("translator", "")
    try:
        first = model.engine.process.pid
        os.kill(first, signal.SIGSTOP)  # no request in flight: only its heartbeat stops
        deadline = time.monotonic() + 60
        while model.engine is None or model.engine.process.pid == first:
            assert time.monotonic() < deadline, "a stopped idle engine was never replaced"
            await asyncio.sleep(0.05)
        assert model.engine_restarts == {"exited": 0, "stalled": 1}
        [result] = await model.translate([model.prepare("eins", beam_size=1)])
        assert result.text
    finally:
        await repo.close()


def test_a_stopped_idle_engine_is_replaced(tiny_repository: Path) -> None:
    asyncio.run(_stop_while_idle(tiny_repository))


def test_a_version_the_engine_cannot_load_is_unavailable_with_the_reason(
    tiny_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(tiny_repository, repository)
    (repository / "translator" / "1" / "decoder.onnx").write_bytes(b"not an onnx file")

    async def main() -> list:
        repo = ModelRepository(repository, Settings(model_repository=repository))
        await repo.load("translator")
        try:
            return [row for row in repo.index() if row[0] == "translator"]
        finally:
            await repo.close()

    [(name, version, state, reason)] = asyncio.run(main())
    assert (name, version, state.value) == ("translator", "1", "UNAVAILABLE")
    assert "decoder.onnx" in reason, reason


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this onnxruntime build has CUDA: the fallback cannot be shown",
)
def test_the_translator_follows_the_device_and_its_fallback_policy(
    version_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = read_config(version_dir.parent)
    cuda = Settings(model_repository=version_dir.parent.parent, device=Device.CUDA)
    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider is not available"):
        load_translator(version_dir, config, cuda)
    warn = dataclasses.replace(cuda, device_fallback=FallbackPolicy.WARN)
    with caplog.at_level(logging.WARNING, logger="serving.models.onnx_model"):
        translator = load_translator(version_dir, config, warn)
    assert translator.model.providers == ["CPUExecutionProvider"]
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "asked for CUDAExecutionProvider, the session got CPUExecutionProvider"
    ] * 2


async def _fill_the_queue(repository: Path) -> None:
    repo = ModelRepository(repository, Settings(model_repository=repository))
    await repo.load("translator")
    model = repo.get("translator", "")
    try:
        assert (model.max_rows, model.queue_capacity) == (8, 2)
        held = [
            asyncio.ensure_future(
                model.translate([model.prepare(LONG, beam_size=4, max_length=60)])
            )
            for _ in range(4)
        ]
        await asyncio.sleep(0)  # 2 decode (8 rows), 2 wait: the queue is full
        with pytest.raises(QueueFull, match="queue full"):
            await model.translate([model.prepare("eins", beam_size=1)])
        results = await asyncio.gather(*held)
        assert all(r[0].text for r in results)
        [after] = await model.translate([model.prepare("eins", beam_size=1)])  # room again
        assert after.text
    finally:
        await repo.close()


def test_a_full_translator_queue_rejects_at_once(tiny_repository: Path, tmp_path: Path) -> None:
    """`max_queue_size` bounds the requests waiting for decoder rows (here 8 rows and 2
    places); more are refused with QueueFull (RESOURCE_EXHAUSTED), not queued."""
    repository = tmp_path / "repo"
    shutil.copytree(tiny_repository, repository)
    path = repository / "translator" / "config.pbtxt"
    config = read_config(path.parent)
    config.max_batch_size = 8
    config.dynamic_batching.default_queue_policy.max_queue_size = 2
    path.write_text(text_format.MessageToString(config))
    asyncio.run(_fill_the_queue(repository))
