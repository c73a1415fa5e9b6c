"""The one dataplane behind every protocol adapter: readiness, model lookup, inference."""

from __future__ import annotations

from dataclasses import dataclass

SERVER_NAME = "seqserve"


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


class DataPlane:
    """Protocol-independent server logic. Adapters convert wire messages and call it."""

    # Only what seqserve really implements is advertised: perf_analyzer and tritonclient act on
    # this list (for example, "statistics" makes perf_analyzer call ModelStatistics).
    EXTENSIONS: tuple[str, ...] = ()

    def __init__(self, version: str) -> None:
        self._version = version
        self._ready = False
        self._draining = False

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def start_draining(self) -> None:
        self._draining = True

    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return self._ready and not self._draining

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, self._version, self.EXTENSIONS)
