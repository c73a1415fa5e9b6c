"""Closed-loop load generator for a served V2 translator, on tritonclient's async gRPC client.

Runs in the tritonclient tool venv (`.tools/tritonclient/bin/python bench/translator_load.py
SPEC.json`): tritonclient needs protobuf<7 and brings its own generated `inference.*` messages,
which cannot share a process with seqserve's. So this file imports only the standard library,
numpy and tritonclient, and talks JSON: the spec file in, one JSON document out on stdout.

Spec: {"target", "model", "sentences": [str], "concurrency", "seconds", "windows",
       "warmup_seconds", "start", "parameters": {"beam_size": int, "max_length": int}}
Client i sends sentences s+i, s+i+c, s+i+2c, ... (s = start, c = concurrency, wrapping
around; the caller moves `start` on between calls so that short windows still cover every
sentence over the repeats), each as soon
as its previous answer arrived, so the c requests in flight are c consecutive sentences, the
same groups the batched in-process engines decode together. A window counts the requests that
complete inside it; requests still in flight when it closes are drained and not counted.
Output: {"windows": [{"seconds", "requests": [[sentence, latency_s, text], ...]}], "errors"}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np
import tritonclient.grpc.aio as grpcclient


async def _client(
    client: grpcclient.InferenceServerClient,
    spec: dict,
    first: int,
    stop_at: float,
    window_start: float,
    out: list,
    errors: list,
) -> None:
    sentences, c = spec["sentences"], spec["concurrency"]
    k = first
    while time.perf_counter() < stop_at:
        index = (spec.get("start", 0) + k) % len(sentences)
        k += c
        text = grpcclient.InferInput("text", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[sentences[index].encode()]], dtype=object))
        t0 = time.perf_counter()
        try:
            result = await client.infer(spec["model"], [text], parameters=spec["parameters"])
        except Exception as err:  # noqa: BLE001 - recorded, the benchmark reports it
            errors.append(str(err)[:300])
            continue
        t1 = time.perf_counter()
        if window_start <= t0 and t1 <= stop_at:
            out.append([index, t1 - t0, result.as_numpy("translation").reshape(-1)[0].decode()])


async def _window(
    client: grpcclient.InferenceServerClient, spec: dict, seconds: float, errors: list
) -> list:
    out: list = []
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _client(client, spec, i, start + seconds, start, out, errors)
            for i in range(spec["concurrency"])
        )
    )
    return out


async def main(spec: dict) -> dict:
    client = grpcclient.InferenceServerClient(spec["target"])
    errors: list = []
    try:
        await _window(client, spec, spec["warmup_seconds"], errors)
        windows = []
        for _ in range(spec["windows"]):
            requests = await _window(client, spec, spec["seconds"], errors)
            windows.append({"seconds": spec["seconds"], "requests": requests})
    finally:
        await client.close()
    return {"windows": windows, "errors": errors[:20], "error_count": len(errors)}


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        json.dump(asyncio.run(main(json.load(f))), sys.stdout)
