"""Server settings: one frozen dataclass, filled from flags (tritonserver's names where one
exists) and `SEQSERVE_*` environment variables in `main()`, never at import."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

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
    model_repository: Path
    grpc_address: str = "127.0.0.1"
    grpc_port: int = 8001
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 8002  # 0 disables the metrics endpoint
    model_control_mode: ModelControlMode = ModelControlMode.NONE
    repository_poll_secs: float = 15.0
    load_models: tuple[str, ...] = ()  # explicit mode: models to load at start ("*" = all)
    device: Device = Device.CPU
    device_fallback: FallbackPolicy = FallbackPolicy.FAIL
    intra_op_threads: int = 1  # per onnxruntime session; scale with instances and processes
    inter_op_threads: int = 1
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS  # more get RESOURCE_EXHAUSTED (0: no cap)
    max_streams_per_connection: int = MAX_STREAMS_PER_CONNECTION  # more wait at the client
    max_request_bytes_in_flight: int = MAX_REQUEST_BYTES_IN_FLIGHT  # native; 0: no budget
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # require client certificates signed by this CA
    grace_period_secs: float = 30.0
    engine_stall_secs: float = 60.0  # a translator engine holding requests, no step: restart it
    log_level: str = "INFO"
    workers: int = 1  # server processes sharing the gRPC port (serving/supervisor.py)
    reuse_port: bool = False  # set by the supervisor for its workers, never by a flag
    worker_status_file: Path | None = None  # a worker writes its loopback metrics port here
    frontend: Frontend = Frontend.AUTO
    # Triton's --grpc-restricted-protocol values, "<protocols>:<key>=<value>" each.
    grpc_restricted_protocol: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        for name in ("grpc_port", "metrics_port"):
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
        def path(value: str | None) -> Path | None:
            return Path(value) if value else None

        return cls(
            model_repository=Path(ns.model_repository),
            grpc_address=ns.grpc_address,
            grpc_port=ns.grpc_port,
            metrics_address=ns.metrics_address,
            metrics_port=ns.metrics_port,
            model_control_mode=ModelControlMode(ns.model_control_mode),
            repository_poll_secs=ns.repository_poll_secs,
            load_models=tuple(ns.load_model or ()),
            device=Device(ns.device),
            device_fallback=FallbackPolicy(ns.device_fallback),
            intra_op_threads=ns.intra_op_threads,
            inter_op_threads=ns.inter_op_threads,
            max_message_bytes=ns.max_message_bytes,
            max_concurrent_rpcs=ns.max_concurrent_rpcs,
            max_streams_per_connection=ns.max_streams_per_connection,
            max_request_bytes_in_flight=ns.max_request_bytes_in_flight,
            tls_cert=path(ns.tls_cert),
            tls_key=path(ns.tls_key),
            tls_client_ca=path(ns.tls_client_ca),
            grace_period_secs=ns.grace_period_secs,
            engine_stall_secs=ns.engine_stall_secs,
            log_level=ns.log_level,
            workers=ns.workers,
            frontend=Frontend(ns.frontend),
            grpc_restricted_protocol=tuple(ns.grpc_restricted_protocol or ()),
        )


class _AppendOverDefault(argparse.Action):
    """Like action="append", except that the flags replace the default (taken from the
    environment) instead of adding to it: a flag on the command line wins."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest)
        if current is self.default:
            current = None
        setattr(namespace, self.dest, [*(current or []), values])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `seqserve serve`'s flags. Each flag's default comes from SEQSERVE_<FLAG> if set."""

    def env(flag: str, default: object) -> object:
        return os.environ.get("SEQSERVE_" + flag.upper().replace("-", "_"), default)

    def add(flag: str, default: object, help: str, **kw: object) -> None:
        value = env(flag, default)
        parser.add_argument(
            f"--{flag}",
            default=value,
            help=f"{help} [env SEQSERVE_{flag.upper().replace('-', '_')}; default: {value}]",
            **kw,
        )

    add("model-repository", "model_repository", "Triton-style model repository folder")
    add("grpc-address", "127.0.0.1", "address to serve gRPC on (0.0.0.0 for all interfaces)")
    add("grpc-port", 8001, "gRPC port", type=int)
    add("metrics-address", "127.0.0.1", "address of the Prometheus /metrics endpoint")
    add("metrics-port", 8002, "Prometheus metrics port (0 disables it)", type=int)
    add(
        "model-control-mode",
        "none",
        "none: load all at start; explicit: --load-model and "
        "Load/Unload RPCs; poll: pick up repository changes",
        choices=[m.value for m in ModelControlMode],
    )
    add("repository-poll-secs", 15.0, "poll interval in poll mode", type=float)
    parser.add_argument(
        "--load-model",
        action="append",
        metavar="NAME",
        help="explicit mode: a model to load at start (repeatable, * = all)",
    )
    add("device", "cpu", "onnxruntime execution provider", choices=[d.value for d in Device])
    add(
        "device-fallback",
        "fail",
        "when a session does not get the provider asked for: fail the model, or warn and go on",
        choices=[p.value for p in FallbackPolicy],
    )
    add("intra-op-threads", 1, "intra-op threads per onnxruntime session", type=int)
    add("inter-op-threads", 1, "inter-op threads per onnxruntime session", type=int)
    add("max-message-bytes", MAX_MESSAGE_BYTES, "largest gRPC message accepted or sent", type=int)
    add(
        "max-concurrent-rpcs",
        MAX_CONCURRENT_RPCS,
        "calls in progress at once, over all "
        "connections; more are refused with RESOURCE_EXHAUSTED (0: no cap)",
        type=int,
    )
    add(
        "max-streams-per-connection",
        MAX_STREAMS_PER_CONNECTION,
        "HTTP/2 streams one "
        "connection may have open; more wait at the client (0: gRPC's default, 100)",
        type=int,
    )
    add(
        "max-request-bytes-in-flight",
        MAX_REQUEST_BYTES_IN_FLIGHT,
        "native front end: "
        "request bytes held at once, copies included; past it, messages wait to be served, "
        "and calls whose message is still arriving after 20 ms are refused with "
        "RESOURCE_EXHAUSTED (0: no budget)",
        type=int,
    )
    add("tls-cert", None, "PEM server certificate (enables TLS)")
    add("tls-key", None, "PEM private key of --tls-cert")
    add("tls-client-ca", None, "PEM CA bundle: require and verify client certificates")
    add("grace-period-secs", 30.0, "on SIGTERM, how long in-flight calls may finish", type=float)
    add(
        "engine-stall-secs",
        60.0,
        "restart a translator engine process that holds requests but "
        "has run no decoder step for this long (they fail; 0: never)",
        type=float,
    )
    add("log-level", "INFO", "logging level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add(
        "frontend",
        "auto",
        "what listens on the gRPC port: native (C++, ModelInfer of tensor "
        "models batched without the interpreter; the rest forwarded to the Python server), "
        "python, or auto (native when built)",
        choices=[f.value for f in Frontend],
    )
    env_restricted = os.environ.get("SEQSERVE_GRPC_RESTRICTED_PROTOCOL", "")
    parser.add_argument(
        "--grpc-restricted-protocol",
        action=_AppendOverDefault,
        metavar="PROTOCOLS:KEY=VALUE",
        default=[s for s in env_restricted.split(";") if s] or None,
        help="as tritonserver's: only callers with the header triton-grpc-protocol-KEY: VALUE "
        "may call these protocols (comma-separated: health, metadata, inference, "
        "shared-memory, model-config, model-repository, statistics, trace, logging); others "
        "get PERMISSION_DENIED. Repeatable, one group each [env "
        "SEQSERVE_GRPC_RESTRICTED_PROTOCOL, groups separated by ';']",
    )
    add(
        "workers",
        1,
        "server processes sharing the gRPC port (SO_REUSEPORT), each with its "
        "own copy of the models; one /metrics sums them",
        type=int,
    )
