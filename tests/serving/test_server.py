"""The server process: health, V2 server RPCs, metrics endpoint, graceful drain."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ROOT, ServerProcess, free_port, native_built


def test_health_serving_for_server_and_inference_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no_such_model"), timeout=5)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("frontend", ["python", "native"])
def test_health_watch_streams_the_status(empty_repository: Path, frontend: str) -> None:
    """grpc.health.v1 Watch (a handler that sends with context.write) gets through the
    status-mapping interceptor, and through the native front end's forwarding."""
    if frontend == "native":
        native_built()
    server = ServerProcess(empty_repository, "--frontend", frontend)
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for service, want in (
                ("", health_pb2.HealthCheckResponse.SERVING),
                ("nosuch", health_pb2.HealthCheckResponse.SERVICE_UNKNOWN),
            ):
                watch = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert next(watch).status == want
                watch.cancel()
    finally:
        assert server.terminate() == 0, server.output()


def test_v2_server_rpcs(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
        meta = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5)
        assert meta.name == "seqserve"
        assert meta.version
        # Nothing unimplemented is advertised.
        assert not {"system_shared_memory", "cuda_shared_memory", "trace", "logging"} & set(
            meta.extensions
        )


@pytest.mark.parametrize(
    ("rpc", "request_cls", "words"),
    [
        ("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest, "shared memory"),
        ("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest, "CUDA shared memory"),
        ("TraceSetting", pb.TraceSettingRequest, "tracing"),
        ("LogSettings", pb.LogSettingsRequest, "log settings"),
    ],
)
def test_unsupported_rpcs_say_so(
    server: ServerProcess, rpc: str, request_cls: type, words: str
) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            getattr(stub, rpc)(request_cls(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert rpc in err.value.details() and words in err.value.details()


def test_reflection_lists_services(server: ServerProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([req]), timeout=5)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_metrics_endpoint_serves_prometheus_text(server: ServerProcess) -> None:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        body = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/plain")
    assert "process_resident_memory_bytes" in body
    assert "# TYPE seqserve_model_ready gauge" in body


def test_sigterm_drains_and_exits_zero(server: ServerProcess) -> None:
    assert server.terminate() == 0
    out = server.output()
    assert "draining" in out and "stopped" in out


def test_port_in_use_fails_with_a_clear_message(
    server: ServerProcess, empty_repository: Path
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "serve",
            "--model-repository",
            str(empty_repository),
            "--http-port",
            "0",
            "--grpc-port",
            str(server.grpc_port),
            "--metrics-port",
            str(free_port()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{server.grpc_port}" in proc.stderr
