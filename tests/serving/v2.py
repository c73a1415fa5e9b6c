"""Small helpers for V2 requests with the project's own stubs."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving import tensors


def request(
    model: str,
    version: str = "",
    rid: str = "",
    outputs: tuple[str, ...] = (),
    **inputs: np.ndarray,
) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model, model_version=version, id=rid)
    for name, array in inputs.items():
        datatype = tensors.v2_datatype(array)
        msg.inputs.add(name=name, datatype=datatype, shape=array.shape)
        msg.raw_input_contents.append(tensors.to_raw(array, datatype))
    for name in outputs:
        msg.outputs.add(name=name)
    return msg


def outputs(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        o.name: tensors.from_raw(raw, o.datatype, list(o.shape), o.name)
        for o, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
    }


def stub(target: str) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(
        target,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def call_error(fn: object, *args: object, **kw: object) -> grpc.RpcError:
    try:
        fn(*args, **kw)  # type: ignore[operator]
    except grpc.RpcError as err:
        return err
    raise AssertionError("the call succeeded")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> dict[tuple[str, str], float]:
    """Samples of a Prometheus text exposition as {(name, "k=v,..." sorted): value}, names
    exactly as exposed (prometheus-client's parser renames counters, so it is not used)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = ",".join(f"{k}={v}" for k, v in sorted(_LABEL.findall(m[2] or "")))
            out[(m[1], labels)] = float(m[3])
    return out


async def held(metrics_url: str, model: str, at_least: int, busy: list) -> bool:
    """Wait until the server holds `at_least` requests for `model` (received, unanswered, by
    its own nv_inference_pending_request_count); False once every call in `busy` ended."""
    key = ("nv_inference_pending_request_count", f"model={model},version=1")
    while not all(b.done() for b in busy):
        if (await asyncio.to_thread(scrape, metrics_url)).get(key, 0) >= at_least:
            return True
        await asyncio.sleep(0.002)
    return False
