"""Dynamic batching under concurrent load, and the batcher's rules in isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from core.errors import QueueFull
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.batcher import Batcher, BatchPolicy
from serving.stats import ModelStats
from tests.conftest import ServerProcess, native_built
from tests.serving.model_factory import AFFINE_CONFIG, add_model, affine
from tests.serving.v2 import outputs, request


async def _concurrent(target: str, model: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(n)]
    async with grpc.aio.insecure_channel(target) as ch:
        s = pb_grpc.GRPCInferenceServiceStub(ch)
        replies = await asyncio.gather(*(s.ModelInfer(request(model, x=x), timeout=30) for x in xs))
    return [(x, outputs(r)["y"]) for x, r in zip(xs, replies, strict=True)]


def _stats(target: str, model: str) -> pb.ModelStatistics:
    with grpc.insecure_channel(target) as ch:
        s = pb_grpc.GRPCInferenceServiceStub(ch)
        return s.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=5).model_stats[0]


def test_concurrent_requests_are_batched_and_correct(standard_server: ServerProcess) -> None:
    before = _stats(standard_server.target, "affine")
    results = asyncio.run(_concurrent(standard_server.target, "affine", 64))
    for x, y in results:
        np.testing.assert_array_equal(y, 2 * x + 1)  # each request got its own slice
    after = _stats(standard_server.target, "affine")
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 64
    assert executions < inferences, "64 concurrent requests must share executions"
    assert max(b.batch_size for b in after.batch_stats) > 1


def test_without_dynamic_batching_each_request_runs_alone(standard_server: ServerProcess) -> None:
    before = _stats(standard_server.target, "affine_nobatch")
    asyncio.run(_concurrent(standard_server.target, "affine_nobatch", 16))
    after = _stats(standard_server.target, "affine_nobatch")
    assert after.execution_count - before.execution_count == 16


def _run_policy(policy: BatchPolicy, sizes: list[int]) -> tuple[list[int], ModelStats]:
    batches: list[int] = []

    def run(inputs: dict[str, np.ndarray], instance: int) -> dict[str, np.ndarray]:
        batches.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    async def main() -> ModelStats:
        stats = ModelStats()
        batcher = Batcher(policy, run, stats, "t")
        xs = [np.full((n, 2), i, np.float32) for i, n in enumerate(sizes)]
        outs = await asyncio.gather(*(batcher.submit({"x": x}, len(x)) for x in xs))
        for x, (out, _) in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(out["y"], x * 2)
        await batcher.close()
        return stats

    return batches, asyncio.run(main())


def test_batches_never_exceed_max_batch_size() -> None:
    batches, stats = _run_policy(
        BatchPolicy(max_batch_size=4, batching=True, max_queue_delay_s=0.01), [1, 2, 3, 1, 1, 4, 2]
    )
    assert max(batches) <= 4 and sum(batches) == 14
    assert stats.inference_count == 14 and stats.execution_count == len(batches)


def test_preferred_batch_size_runs_without_waiting_for_the_delay() -> None:
    async def main() -> float:
        batcher = Batcher(
            BatchPolicy(
                max_batch_size=8, batching=True, max_queue_delay_s=5.0, preferred_batch_sizes=(2,)
            ),
            lambda i, k: {"y": i["x"]},
            ModelStats(),
            "t",
        )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        x = np.zeros((1, 2), np.float32)
        await asyncio.gather(batcher.submit({"x": x}, 1), batcher.submit({"x": x}, 1))
        elapsed = loop.time() - t0
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < 2.0  # far below the 5 s delay


def test_different_item_shapes_batch_only_with_equals() -> None:
    seen: list[tuple[int, ...]] = []

    def run(inputs: dict[str, np.ndarray], instance: int) -> dict[str, np.ndarray]:
        seen.append(inputs["x"].shape)
        return {"y": inputs["x"]}

    async def main() -> None:
        batcher = Batcher(
            BatchPolicy(max_batch_size=8, batching=True, max_queue_delay_s=0.01),
            run,
            ModelStats(),
            "t",
        )
        xs = [np.zeros((1, n), np.float32) for n in (3, 5, 3, 5, 3)]
        outs = await asyncio.gather(*(batcher.submit({"x": x}, 1) for x in xs))
        assert [o["y"].shape for o, _ in outs] == [x.shape for x in xs]
        await batcher.close()

    asyncio.run(main())
    assert sorted(seen) == [(2, 5), (3, 3)]


def test_full_queue_rejects() -> None:
    gate = threading.Event()  # the first batch runs until the third request was refused

    async def main() -> None:

        def run(inputs: dict[str, np.ndarray], instance: int) -> dict[str, np.ndarray]:
            gate.wait(10)
            return inputs

        batcher = Batcher(
            BatchPolicy(max_batch_size=1, batching=True, max_queue_size=1, max_queue_delay_s=10.0),
            run,
            ModelStats(),
            "t",
        )
        x = np.zeros((1, 1), np.float32)
        first = asyncio.ensure_future(batcher.submit({"x": x}, 1))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(batcher.submit({"x": x}, 1))
        await asyncio.sleep(0)
        try:
            await batcher.submit({"x": x}, 1)
        except QueueFull as err:
            assert "queue full (1 requests)" in str(err)
        else:
            raise AssertionError("the third request must be rejected")
        finally:
            gate.set()
        await asyncio.gather(first, second)
        await batcher.close()

    asyncio.run(main())


# The same rules on both front ends: the Python batcher and the native fast path's queue
# (serving/native/model_queue.cc) implement the config's one policy, held to the same cases.
DELAYED = "dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 5000000 }"
CAPPED = "dynamic_batching { max_queue_delay_microseconds: 20000 }"


@pytest.fixture(scope="module", params=["python", "native"])
def policy_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    if request.param == "native":
        native_built()
    repo = tmp_path_factory.mktemp("policy") / "model_repository"
    add_model(repo, "preferred", AFFINE_CONFIG.format(scheduling=DELAYED, extra=""), affine)
    add_model(repo, "capped", AFFINE_CONFIG.format(scheduling=CAPPED, extra=""), affine)
    srv = ServerProcess(repo, "--frontend", request.param)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.terminate()


def test_served_batches_never_exceed_max_batch_size(policy_server: ServerProcess) -> None:
    sizes = [1, 2, 3, 1, 1, 4, 2, 3, 4, 1, 2, 3, 4, 4, 1, 2]

    async def send() -> None:
        rng = np.random.default_rng(1)
        async with grpc.aio.insecure_channel(policy_server.target) as ch:
            s = pb_grpc.GRPCInferenceServiceStub(ch)
            xs = [rng.standard_normal((n, 4)).astype(np.float32) for n in sizes]
            replies = await asyncio.gather(
                *(s.ModelInfer(request("capped", x=x), timeout=30) for x in xs)
            )
        for x, r in zip(xs, replies, strict=True):
            assert outputs(r)["y"].shape == x.shape

    asyncio.run(send())
    stats = _stats(policy_server.target, "capped")
    batches = {b.batch_size: b.compute_infer.count for b in stats.batch_stats}
    assert max(batches) <= 8, batches  # max_batch_size
    assert sum(k * n for k, n in batches.items()) == sum(sizes) == stats.inference_count


def test_a_preferred_batch_size_runs_without_waiting_for_the_delay(
    policy_server: ServerProcess,
) -> None:
    t0 = time.monotonic()
    asyncio.run(_concurrent(policy_server.target, "preferred", 2))
    assert time.monotonic() - t0 < 2.0  # far below the 5 s delay
