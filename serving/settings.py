"""Server settings: one frozen dataclass, the one definition of every `seqserve serve` flag
(tritonserver's names where one exists) and its `SEQSERVE_*` variable, filled in `main()`,
never at import."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from core.flags import add_flags, flag, from_flags
from serving import restricted


class ModelControlMode(StrEnum):
    """As tritonserver's `--model-control-mode`."""

    NONE = "none"  # load everything at start, never change
    EXPLICIT = "explicit"  # load what --load-model names; Load/Unload RPCs allowed
    POLL = "poll"  # rescan the repository every --repository-poll-secs


class Device(StrEnum):
    """Where onnxruntime sessions run."""

    CPU = "cpu"
    CUDA = "cuda"  # CUDA execution provider first, then CPU for unsupported ops


class FallbackPolicy(StrEnum):
    """What to do when a session did not get the provider asked for."""

    FAIL = "fail"  # the model is not loaded, with the reason in RepositoryIndex
    WARN = "warn"  # the model loads on what it got, with a loud warning in the log


class Frontend(StrEnum):
    """What listens on the gRPC port."""

    AUTO = "auto"  # native when it is built (`make native`), else python
    NATIVE = "native"  # serving/native: ModelInfer of tensor models in C++, the rest forwarded
    PYTHON = "python"  # grpc.aio alone


INT32_MAX = 2**31 - 1  # tritonclient's message size limits
MAX_MESSAGE_BYTES = 64 * 2**20  # default cap on a request or response (docs/serving.md)
MAX_CONCURRENT_RPCS = 256  # default cap on calls in progress, over all connections
MAX_STREAMS_PER_CONNECTION = 64  # default HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS
# Default budget of the request bytes the native front end holds, copies included
# (serving/native/budget.h): the copies of one message at the cap being served (3 x 64 MiB),
# and 320 MiB of messages received or still arriving. With what may arrive before the front
# end sheds calls, the worst case stays under 1 GiB (docs/serving.md, "Memory, worst case").
MAX_REQUEST_BYTES_IN_FLIGHT = 512 * 2**20


@dataclass(frozen=True)
class Settings:
    """`seqserve serve`'s settings: each field with a `flag` is the one definition of its flag
    (name, default, help, SEQSERVE_<FLAG> variable; core/flags.py)."""

    model_repository: Path = flag(
        Path("model_repository"), "Triton-style model repository folder", env=True
    )
    grpc_address: str = flag(
        "127.0.0.1", "address to serve gRPC on (0.0.0.0 for all interfaces)", env=True
    )
    grpc_port: int = flag(8001, "gRPC port", env=True)
    http_address: str = flag(
        "127.0.0.1",
        "address to serve KServe V2 REST (HTTP/JSON) on (0.0.0.0 for all interfaces)",
        env=True,
    )
    http_port: int = flag(8000, "KServe V2 REST port, as Triton's (0 disables it)", env=True)
    metrics_address: str = flag(
        "127.0.0.1", "address of the Prometheus /metrics endpoint", env=True
    )
    metrics_port: int = flag(8002, "Prometheus metrics port (0 disables it)", env=True)
    model_control_mode: ModelControlMode = flag(
        ModelControlMode.NONE,
        "none: load all at start; explicit: --load-model and Load/Unload RPCs; poll: pick up "
        "repository changes",
        env=True,
    )
    repository_poll_secs: float = flag(15.0, "poll interval in poll mode", env=True)
    load_models: tuple[str, ...] = flag(
        (),
        "explicit mode: a model to load at start (repeatable, * = all)",
        name="load-model",
        metavar="NAME",
        repeat=True,
    )
    device: Device = flag(Device.CPU, "onnxruntime execution provider", env=True)
    device_fallback: FallbackPolicy = flag(
        FallbackPolicy.FAIL,
        "when a session does not get the provider asked for: fail the model, or warn and go on",
        env=True,
    )
    # Per onnxruntime session; scale with instances and processes.
    intra_op_threads: int = flag(1, "intra-op threads per onnxruntime session", env=True)
    inter_op_threads: int = flag(1, "inter-op threads per onnxruntime session", env=True)
    max_message_bytes: int = flag(
        MAX_MESSAGE_BYTES, "largest gRPC message accepted or sent", env=True
    )
    max_concurrent_rpcs: int = flag(
        MAX_CONCURRENT_RPCS,
        "calls in progress at once, over all connections; more are refused with "
        "RESOURCE_EXHAUSTED (0: no cap)",
        env=True,
    )
    max_streams_per_connection: int = flag(
        MAX_STREAMS_PER_CONNECTION,
        "HTTP/2 streams one connection may have open; more wait at the client (0: gRPC's "
        "default, 100)",
        env=True,
    )
    max_request_bytes_in_flight: int = flag(
        MAX_REQUEST_BYTES_IN_FLIGHT,
        "request bytes held at once, copies included, by the gRPC and HTTP ports together; "
        "past it, gRPC messages wait to be read (Python front end) or served, calls whose "
        "message is still arriving after 10 ms (native) or slow after 250 ms (Python) may be "
        "refused with RESOURCE_EXHAUSTED, HTTP requests are refused with 429 (0: no budget)",
        env=True,
    )
    tls_cert: Path | None = flag(None, "PEM server certificate (enables TLS)", env=True)
    tls_key: Path | None = flag(None, "PEM private key of --tls-cert", env=True)
    tls_client_ca: Path | None = flag(
        None, "PEM CA bundle: require and verify client certificates", env=True
    )
    grace_period_secs: float = flag(
        30.0, "on SIGTERM, how long in-flight calls may finish", env=True
    )
    engine_stall_secs: float = flag(
        60.0,
        "restart a translator engine process that holds requests but has run no decoder step "
        "for this long (they fail; 0: never)",
        env=True,
    )
    log_level: str = flag(
        "INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), env=True
    )
    frontend: Frontend = flag(
        Frontend.AUTO,
        "what listens on the gRPC port: native (C++, ModelInfer of tensor models batched "
        "without the interpreter; the rest answered by the Python servicers in process), "
        "python, or auto "
        "(native when built)",
        env=True,
    )
    # Triton's --grpc-restricted-protocol values, "<protocols>:<key>=<value>" each.
    grpc_restricted_protocol: tuple[str, ...] = flag(
        (),
        "as tritonserver's: only callers with the header triton-grpc-protocol-KEY: VALUE may "
        "call these protocols (comma-separated: health, metadata, inference, shared-memory, "
        "model-config, model-repository, statistics, trace, logging); others get "
        "PERMISSION_DENIED. Repeatable, one group each; in the variable, groups are "
        "separated by ';'",
        metavar="PROTOCOLS:KEY=VALUE",
        repeat=True,
        env=True,
    )
    # Triton's --http-restricted-api values, "<apis>:<key>=<value>" each.
    http_restricted_api: tuple[str, ...] = flag(
        (),
        "as tritonserver's: only HTTP callers with the header KEY: VALUE may call these "
        "APIs (the groups of --grpc-restricted-protocol); others get 403. Repeatable, one "
        "group each; in the variable, groups are separated by ';'",
        metavar="APIS:KEY=VALUE",
        repeat=True,
        env=True,
    )
    workers: int = flag(
        1,
        "server processes sharing the gRPC port (SO_REUSEPORT), each with its own copy of the "
        "models; one /metrics sums them",
        env=True,
    )
    reuse_port: bool = False  # set by the supervisor for its workers, never by a flag
    worker_status_file: Path | None = None  # a worker writes its loopback metrics port here

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be in 0..65535, got {port}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0 (0 = onnxruntime's default)")
        if self.repository_poll_secs <= 0:
            raise ValueError("--repository-poll-secs must be > 0")
        if not 0 < self.max_message_bytes <= INT32_MAX:
            raise ValueError(f"--max-message-bytes must be in 1..{INT32_MAX}")
        for name in ("max_concurrent_rpcs", "max_streams_per_connection"):
            if not 0 <= getattr(self, name) <= INT32_MAX:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be in 0..{INT32_MAX} (0: no cap)"
                )
        if not 0 <= self.max_request_bytes_in_flight < 2**62:
            raise ValueError("--max-request-bytes-in-flight must be >= 0 (0: no budget)")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        restricted.parse(self.grpc_restricted_protocol)  # ValueError naming the problem
        restricted.groups(self.http_restricted_api, "--http-restricted-api", "")
        if self.workers > 1 and self.model_control_mode is ModelControlMode.EXPLICIT:
            raise ValueError(
                "--workers > 1 needs --model-control-mode none or poll: a Load or "
                "Unload call would reach one worker only"
            )

    @property
    def grpc_target(self) -> str:
        return f"{self.grpc_address}:{self.grpc_port}"

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Settings:
        return from_flags(cls, ns)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `seqserve serve`'s flags, generated from `Settings`; each flag's default comes from
    SEQSERVE_<FLAG> if set."""
    add_flags(parser, Settings)
