"""Closed-loop load generator on `tritonclient`'s asyncio gRPC client.

Runs in the tritonclient tool venv (its generated `inference.*` messages clash with ours), so it
imports nothing from seqserve: `seqserve bench serving` starts it as a subprocess and reads one
JSON object from its stdout.

    .tools/tritonclient/bin/python bench/loadgen.py --url 127.0.0.1:8001 --model forecaster_gru \
        --concurrency 8 --seconds 3 [--text-file sentences.txt]

Each of `concurrency` clients sends a batch-1 request, waits for its answer and sends the next
(closed loop), for a warm-up then a measurement window. The clients share one gRPC connection,
or `--connections K` connections (client i on connection i mod K): a server with `--workers`
spreads connections, not requests, over its processes. Inputs come from the model's metadata:
random normal values for numeric tensors, lines of --text-file (round robin) for BYTES.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

NUMPY = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def _inputs(
    metadata: dict, texts: list[str], rng: np.random.Generator
) -> list[grpcclient.InferInput]:
    inputs = []
    for spec in metadata["inputs"]:
        shape = [1] + [d if d > 0 else 1 for d in (int(x) for x in spec["shape"][1:])]
        if spec["datatype"] == "BYTES":
            data = np.array([texts.pop(0).encode()], dtype=np.object_).reshape(shape)
            texts.append(data.flat[0].decode())
        else:
            data = rng.standard_normal(shape).astype(NUMPY[spec["datatype"]])
        tensor = grpcclient.InferInput(spec["name"], shape, spec["datatype"])
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


async def measure(
    url: str,
    model: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    texts: list[str],
    connections: int = 1,
) -> dict:
    # A local subchannel pool per client: its own TCP connection, not grpc's shared one.
    own = [("grpc.use_local_subchannel_pool", 1)] if connections > 1 else None
    clients = [grpcclient.InferenceServerClient(url, channel_args=own) for _ in range(connections)]
    client = clients[0]
    try:
        metadata = await client.get_model_metadata(model, as_json=True)
        rng = np.random.default_rng(0)
        requests = [_inputs(metadata, texts, rng) for _ in range(max(8, concurrency))]
        latencies: list[float] = []
        errors = 0
        start = time.perf_counter()
        measure_from, stop = start + warmup, start + warmup + seconds

        async def worker(offset: int) -> None:
            nonlocal errors
            for i in itertools.count(offset):
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                try:
                    await clients[offset % connections].infer(model, requests[i % len(requests)])
                except InferenceServerException:  # counted, not fatal: reported in the result
                    errors += 1
                    continue
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    latencies.append(t1 - t0)

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    finally:
        for c in clients:
            await c.close()
    if not latencies:
        return {"requests": 0, "errors": errors}
    ms = sorted(x * 1e3 for x in latencies)
    return {
        "requests": len(ms),
        "errors": errors,
        "seconds": seconds,
        "inferences_per_s": len(ms) / seconds,
        "avg_latency_ms": statistics.fmean(ms),
        "p50_ms": ms[len(ms) // 2],
        "p90_ms": ms[int(len(ms) * 0.9)],
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds not measured")
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help="gRPC connections the clients share (round robin)",
    )
    parser.add_argument("--text-file", help="one input sentence per line, for BYTES inputs")
    args = parser.parse_args()
    texts = ["dreihundertzweiundvierzig"]
    if args.text_file:
        with open(args.text_file, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
    result = asyncio.run(
        measure(
            args.url,
            args.model,
            args.concurrency,
            args.seconds,
            args.warmup,
            texts,
            args.connections,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
