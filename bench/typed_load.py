"""The typed Forecast API beside V2 ModelInfer, on one server, from the same client: the
project's grpc.aio stubs, closed loop, `concurrency` clients over as many connections, the same
forecaster and one batch-1 window per call on both sides. Windows alternate between the two
APIs (V2 first, then typed, in each repeat), so both see the same machine; the ratio is taken
per repeat, then the median."""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import Awaitable, Callable

import grpc

from bench.forecast_requests import forecast_request, v2_request
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as fgrpc


async def closed_loop(
    calls: list[Callable[[], Awaitable[object]]], seconds: float, warmup: float
) -> dict:
    """Each of `calls` (one per client) in a loop for `warmup` then `seconds`: throughput and
    latency of the calls started in the measured window."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop = start + warmup, start + warmup + seconds

    async def client(call: Callable[[], Awaitable[object]]) -> None:
        nonlocal errors
        while (t0 := time.perf_counter()) < stop:
            try:
                await call()
            except grpc.aio.AioRpcError:  # counted, not fatal: reported in the result
                errors += 1
                continue
            if t0 >= measure_from:
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(c) for c in calls))
    ms = sorted(x * 1e3 for x in latencies)
    if not ms:
        return {"requests": 0, "errors": errors, "inferences_per_s": 0.0}
    return {
        "requests": len(ms),
        "errors": errors,
        "inferences_per_s": len(ms) / seconds,
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
    }


async def _typed_vs_v2(
    target: str, model: str, concurrencies: list[int], seconds: float, repeats: int
) -> dict:
    # A local subchannel pool per channel: its own TCP connection, as perf_analyzer's clients.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(concurrencies))
    ]
    try:
        infer = await v2_request(channels[0], model)
        forecast = await forecast_request(channels[0], model)
        v2 = [pb_grpc.GRPCInferenceServiceStub(ch) for ch in channels]
        fc = [fgrpc.ForecasterStub(ch) for ch in channels]
        apis = {
            "v2": [functools.partial(s.ModelInfer, infer, timeout=30) for s in v2],
            "typed": [functools.partial(s.Forecast, forecast, timeout=30) for s in fc],
        }
        runs: dict = {api: {c: [] for c in concurrencies} for api in apis}
        for r in range(repeats):
            for c in concurrencies:
                for api, calls in apis.items():
                    res = await closed_loop(calls[:c], seconds, warmup=min(0.5, seconds))
                    runs[api][c].append(res)
                    print(
                        f"  repeat {r} c={c:<3d} {api:>6s}: {res['inferences_per_s']:8.0f}/s "
                        f"p50 {res.get('p50_ms', 0):.3f} ms  errors {res['errors']}",
                        flush=True,
                    )
    finally:
        for ch in channels:
            await ch.close()
    return {
        "runs": {api: {str(c): x for c, x in by_c.items()} for api, by_c in runs.items()},
        "median_per_s": {
            api: {
                str(c): statistics.median(r["inferences_per_s"] for r in x) for c, x in by_c.items()
            }
            for api, by_c in runs.items()
        },
        "typed_to_v2": {
            str(c): statistics.median(
                t["inferences_per_s"] / v["inferences_per_s"] if v["inferences_per_s"] else 0.0
                for t, v in zip(runs["typed"][c], runs["v2"][c], strict=True)
            )
            for c in concurrencies
        },
        "errors": sum(r["errors"] for by_c in runs.values() for x in by_c.values() for r in x),
    }


def typed_vs_v2(
    target: str, model: str, concurrencies: list[int], seconds: float, repeats: int
) -> dict:
    """Typed Forecast and V2 ModelInfer on `model` at `target`, side by side (module doc)."""
    return asyncio.run(_typed_vs_v2(target, model, concurrencies, seconds, repeats))
