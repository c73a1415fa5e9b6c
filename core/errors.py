"""The typed errors of the serving side. Models, the dataplane and servicers raise these; the
gRPC status each maps to lives in one table, `serving.interceptors.STATUS`."""

from __future__ import annotations

from enum import StrEnum


class FailureReason(StrEnum):
    """Triton's `reason` label of `nv_inference_request_failure`."""

    REJECTED = "REJECTED"
    CANCELED = "CANCELED"
    BACKEND = "BACKEND"
    OTHER = "OTHER"


class ServingError(Exception):
    """Base class: `str(error)` is the message the client sees."""

    reason: FailureReason = FailureReason.OTHER


class InvalidInput(ServingError):
    """The request is malformed: name the field and what is wrong with it."""


class ModelNotFound(ServingError):
    """No such model, or no such version of it."""


class ModelNotReady(ServingError):
    """The model exists but is loading, unloading or failed to load."""


class ServerNotReady(ServingError):
    """The server is starting or draining."""


class QueueFull(ServingError):
    """The model's queue is at capacity; retry after a back-off."""

    reason = FailureReason.REJECTED


class DeadlineExceeded(ServingError):
    """The request's deadline or queue timeout passed before it ran."""

    reason = FailureReason.REJECTED


class MessageTooLarge(ServingError):
    """The request or response is larger than the configured cap."""


class PermissionDenied(ServingError):
    """A restricted protocol called without its header (`--grpc-restricted-protocol`)."""


class Unsupported(ServingError):
    """A protocol feature seqserve does not implement (shared memory, trace, log settings)."""


class EngineFailed(ServingError):
    """A model's engine process died or stalled with the request in flight; a new one is
    starting. Retryable (UNAVAILABLE), and a backend failure for the alerts."""

    reason = FailureReason.BACKEND


class InferenceError(ServingError):
    """onnxruntime failed. The client sees a generic message; details go to the log."""

    reason = FailureReason.BACKEND


class ModelLoadError(Exception):
    """A model version cannot be served; the message goes to RepositoryIndex's `reason` (and
    to a Load call's error). Not a request error: no status of its own."""
