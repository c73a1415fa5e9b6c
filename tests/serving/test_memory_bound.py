"""A failed request must not outlive its call (docs/serving.md, "Memory, worst case")."""

from __future__ import annotations

from pathlib import Path

import grpc

from protos.inference import grpc_service_pb2 as pb
from serving.settings import MAX_MESSAGE_BYTES
from tests.conftest import ServerProcess
from tests.serving.model_factory import SLOW_CONFIG, add_model, slow

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MIB = 2**20


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _maximal_request() -> bytes:
    """A serialized ModelInferRequest just under the message cap, for a model the fast path
    does not serve: forwarded to the Python server, so every copy is made (the costliest
    route)."""
    msg = pb.ModelInferRequest(model_name="nobody")
    msg.inputs.add(name="x", datatype="UINT8", shape=[MAX_MESSAGE_BYTES - 4096])
    msg.raw_input_contents.append(bytes(MAX_MESSAGE_BYTES - 4096))
    return msg.SerializeToString()


def test_a_failed_request_is_freed_when_its_call_ends(tmp_path: Path) -> None:
    """grpc.aio's abort kept each failed request in a reference cycle until Python's cyclic
    garbage collector ran: twelve failed requests at the cap, one after another, raised the
    Python front end's RSS by ~700 MiB. Now each is freed as its call ends."""
    repo = tmp_path / "model_repository"
    add_model(repo, "slow", SLOW_CONFIG.format(queue=64), slow)
    server = ServerProcess(repo, "--frontend", "python")
    try:
        server.wait_ready()
        payload = _maximal_request()
        with grpc.insecure_channel(server.target, options=[
                ("grpc.max_send_message_length", -1)]) as ch:
            infer = ch.unary_unary(MODEL_INFER)
            for i in range(12):
                try:
                    infer(payload, timeout=60)
                except grpc.RpcError as err:
                    assert err.code() is grpc.StatusCode.NOT_FOUND
                if i == 1:  # the allocator's working set is there now
                    base = _rss(server.proc.pid)
        growth = _rss(server.proc.pid) - base
        assert growth < 128 * MIB, f"RSS grew {growth / MIB:.0f} MiB over 10 failed requests"
    finally:
        assert server.terminate() == 0
