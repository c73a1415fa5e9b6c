"""A translator engine that fails alone, and one way of stopping, against a real server: with
the engine stopped or wedged and hundreds of Translate calls queued, ServerLive and the other models
keep answering and the calls fail UNAVAILABLE once the watchdog replaces the engine; a
SIGTERM or SIGINT sent to the server's whole process group (systemd's default, Ctrl-C in a
terminal) drains every in-flight translation and exits 0, as a SIGTERM to the server alone
does."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.procfs import engine_children
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.seqserve.translate.v1 import translate_service_pb2 as tpb
from protos.seqserve.translate.v1 import translate_service_pb2_grpc as tgrpc
from tests.conftest import ServerProcess
from tests.serving.freeze import frozen, sleeping_threads, threads
from tests.serving.v2 import held, request

pytestmark = pytest.mark.slow  # engines stopped, wedged and killed under load

LONG = "neunhundertneunundneunzigtausendachthundertsiebenundsiebzig"


def engine_pid(server: ServerProcess) -> int:
    """The translator's engine: the server's child started by multiprocessing's spawn."""
    engines = engine_children(server.proc.pid)
    assert engines, "no engine process found"
    return engines[0]


async def forecast_request(v2: pb_grpc.GRPCInferenceServiceStub) -> pb.ModelInferRequest:
    """A zero-filled request of the shapes forecaster_gru takes."""
    meta = await v2.ModelMetadata(pb.ModelMetadataRequest(name="forecaster_gru"), timeout=10)
    return request(
        "forecaster_gru", **{t.name: np.zeros((1, *t.shape[1:]), np.float32) for t in meta.inputs}
    )


async def _stopped_engine(server: ServerProcess) -> tuple[list, list[float]]:
    async with grpc.aio.insecure_channel(server.target) as ch:
        translate = tgrpc.TranslatorStub(ch)
        v2 = pb_grpc.GRPCInferenceServiceStub(ch)
        forecast = await forecast_request(v2)

        async def one(i: int) -> grpc.StatusCode:
            try:
                await translate.Translate(
                    tpb.TranslateRequest(
                        model_name="translator", sentences=[f"{LONG} {i}"] * 4, beam_size=1
                    ),
                    timeout=60,
                )
            except grpc.aio.AioRpcError as err:
                return err.code()
            return grpc.StatusCode.OK

        calls = [asyncio.ensure_future(one(i)) for i in range(300)]
        live: list[float] = []
        while not all(c.done() for c in calls):
            t = time.monotonic()
            assert (await v2.ServerLive(pb.ServerLiveRequest(), timeout=5)).live
            live.append(time.monotonic() - t)
            await v2.ModelInfer(forecast, timeout=5)  # the other models serve meanwhile
            await asyncio.sleep(0.05)
        return [c.result() for c in calls], live


@pytest.mark.parametrize("fault", ["stopped", "wedged"])
def test_a_stopped_or_wedged_engine_does_not_stall_the_server(
    tiny_repository: Path, fault: str
) -> None:
    """stopped: SIGSTOP, the whole engine (no heartbeat either). wedged: every thread of the
    engine frozen but its heartbeat, which goes on beating, as when an onnxruntime call never
    returns: the watchdog sees requests in flight and no decoder step."""
    server = ServerProcess(tiny_repository, "--engine-stall-secs", "3")
    pid = None
    try:
        server.wait_ready()
        pid = engine_pid(server)
        if fault == "stopped":
            os.kill(pid, signal.SIGSTOP)
            codes, live = asyncio.run(_stopped_engine(server))
        else:
            beating = sleeping_threads(pid)
            assert len(beating) == 1, f"the heartbeat thread is not alone asleep: {beating}"
            with frozen([t for t in threads(pid) if t not in beating]):
                codes, live = asyncio.run(_stopped_engine(server))
        assert max(live) < 1.0, f"ServerLive took {max(live):.2f} s"
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, set(codes)
        assert grpc.StatusCode.UNAVAILABLE in codes  # those the stopped engine held
        reason = "stopped beating" if fault == "stopped" else "ran no decoder step"
        assert reason in server.output() and "killing it" in server.output()
        # The new engine serves.
        with grpc.insecure_channel(server.target) as ch:
            translate = tgrpc.TranslatorStub(ch)
            deadline = time.monotonic() + 60
            while True:
                try:
                    reply = translate.Translate(
                        tpb.TranslateRequest(model_name="translator", sentences=["sieben"]),
                        timeout=10,
                    )
                    break
                except grpc.RpcError as err:
                    assert err.code() is grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            assert reply.translations[0].hypotheses[0].text
        assert engine_pid(server) != pid
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert server.terminate() == 0


async def _group_signal(server: ServerProcess, sig: signal.Signals) -> list:
    async with grpc.aio.insecure_channel(server.target) as ch:
        translate = tgrpc.TranslatorStub(ch)
        v2 = pb_grpc.GRPCInferenceServiceStub(ch)
        # four hypotheses each: the search goes on until four have settled, long enough for
        # the server to hold all 24 (a 1-best search may end first)
        msg = tpb.TranslateRequest(
            model_name="translator",
            sentences=[LONG],
            beam_size=4,
            max_length=60,
            num_hypotheses=4,
        )
        forecast = await forecast_request(v2)
        calls = [asyncio.ensure_future(translate.Translate(msg, timeout=60)) for _ in range(24)]
        calls.append(asyncio.ensure_future(v2.ModelInfer(forecast, timeout=60)))
        if not await held(server.metrics_url, "translator", 24, calls):
            pytest.skip("the translations ended before the server held them all")
        os.killpg(server.proc.pid, sig)  # the server and its engine, as systemd or Ctrl-C
        return await asyncio.gather(*calls, return_exceptions=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_drains_in_flight_translations(
    tiny_repository: Path, sig: signal.Signals
) -> None:
    server = ServerProcess(tiny_repository, new_session=True)
    try:
        server.wait_ready()
        results = asyncio.run(_group_signal(server, sig))
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, failed[:3]
        assert server.proc.wait(30) == 0
    finally:
        server.terminate()
