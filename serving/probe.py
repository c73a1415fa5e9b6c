"""`seqserve health`: a grpc.health.v1 probe for scripts, compose and Kubernetes.

Exit codes: 0 SERVING, 1 not serving (NOT_SERVING, SERVICE_UNKNOWN or an unknown service name),
2 unreachable or failed.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_SERVING, EXIT_NOT_SERVING, EXIT_UNREACHABLE = 0, 1, 2


def check(
    target: str,
    service: str = "",
    timeout: float = 3.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> tuple[int, str]:
    """Ask `target` about `service` ("" = the whole server). Returns (exit code, status word)."""
    channel = (
        grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.NOT_FOUND:
                return EXIT_NOT_SERVING, "SERVICE_UNKNOWN"
            return EXIT_UNREACHABLE, f"{err.code().name}: {err.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return (
        EXIT_SERVING if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_NOT_SERVING
    ), status
