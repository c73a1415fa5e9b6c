"""The server's default bounds hold on both front ends: calls in progress past
`--max-concurrent-rpcs` are refused at once with RESOURCE_EXHAUSTED (and the server goes on);
a connection never has more than `--max-streams-per-connection` calls in the server (the rest
wait at the client, and all complete)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.settings import MAX_CONCURRENT_RPCS, MAX_MESSAGE_BYTES, Settings
from tests.conftest import ServerProcess, native_built
from tests.serving.model_factory import SLOW_CONFIG, add_model, slow
from tests.serving.v2 import outputs, request, scrape

pytestmark = pytest.mark.slow  # hundreds of calls and streams per test

FULL = np.zeros((4, 256, 256), np.float32)  # a full batch of `slow`: about 100 ms


def test_defaults_are_bounded() -> None:
    settings = Settings(model_repository=Path("."))
    assert settings.max_message_bytes == MAX_MESSAGE_BYTES == 64 * 2**20
    assert settings.max_concurrent_rpcs == MAX_CONCURRENT_RPCS > 0
    assert settings.max_streams_per_connection > 0


def _server(tmp_path: Path, frontend: str, *flags: str) -> ServerProcess:
    if frontend == "native":
        native_built()
    repo = tmp_path / "model_repository"
    add_model(repo, "slow", SLOW_CONFIG.format(queue=64), slow)
    server = ServerProcess(repo, "--frontend", frontend, *flags)
    server.wait_ready()
    return server


async def _calls(target: str, n: int, channels: int) -> list[grpc.StatusCode]:
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    try:
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in chans]

        async def one(i: int) -> grpc.StatusCode:
            try:
                await stubs[i % channels].ModelInfer(request("slow", x=FULL), timeout=60)
            except grpc.aio.AioRpcError as err:
                assert err.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED or (
                    "calls in progress" in err.details()
                    or "Concurrent RPC limit exceeded" in err.details()
                ), err.details()
                return err.code()
            return grpc.StatusCode.OK

        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for c in chans:
            await c.close()


@pytest.mark.parametrize("frontend", ["python", "native"])
def test_calls_past_the_cap_are_refused_at_once(tmp_path: Path, frontend: str) -> None:
    server = _server(tmp_path, frontend, "--max-concurrent-rpcs", "3")
    try:
        codes = asyncio.run(_calls(server.target, 16, channels=4))
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        with grpc.insecure_channel(server.target) as ch:  # and it goes on serving
            got = outputs(
                pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
                    request("slow", x=FULL[:1]), timeout=30
                )
            )
            assert got["y"].shape == (1, 256, 256)
    finally:
        assert server.terminate() == 0


async def _one_connection(server: ServerProcess, n: int) -> tuple[list, float]:
    """n calls on one connection; the most the server held at once."""
    key = ("nv_inference_pending_request_count", "model=slow,version=1")
    async with grpc.aio.insecure_channel(server.target) as ch:
        s = pb_grpc.GRPCInferenceServiceStub(ch)
        calls = [
            asyncio.ensure_future(s.ModelInfer(request("slow", x=FULL), timeout=60))
            for _ in range(n)
        ]
        most = 0.0
        while not all(c.done() for c in calls):
            most = max(most, (await asyncio.to_thread(scrape, server.metrics_url)).get(key, 0))
            await asyncio.sleep(0.02)  # (scraping flat out slowed the model it watched)
        return await asyncio.gather(*calls, return_exceptions=True), most


@pytest.mark.parametrize("frontend", ["python", "native"])
def test_streams_per_connection_are_capped(tmp_path: Path, frontend: str) -> None:
    server = _server(tmp_path, frontend, "--max-streams-per-connection", "2")
    try:
        results, most = asyncio.run(_one_connection(server, 8))
        assert all(isinstance(r, pb.ModelInferResponse) for r in results), results
        assert 1 <= most <= 2, most
    finally:
        assert server.terminate() == 0
