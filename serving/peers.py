"""A worker's sibling workers under `seqserve serve --workers N`.

The supervisor gives every worker a status file in one private folder; a worker writes its pid
and loopback endpoint port there once it serves (`Server._report_to_supervisor`). Reading the
folder gives a worker its siblings, so that per-process state can be answered for the whole
server: ModelStatistics sums every worker's `/statistics`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

STATISTICS_PATH = "/statistics"  # a worker's ModelStatisticsResponse, serialized
FETCH_TIMEOUT_S = 2.0


def write_status(path: Path, pid: int, port: int) -> None:
    """Say that this worker serves, with its loopback endpoint port (atomically: a reader
    never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "port": port}))
    tmp.replace(path)


def read_status(path: Path) -> dict[str, int] | None:
    """A status file's pid and port, or None while there is none (not serving yet)."""
    try:
        status = json.loads(path.read_text())
        return {"pid": int(status["pid"]), "port": int(status["port"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Peers:
    """The other workers of this worker's supervisor."""

    def __init__(self, own_status_file: Path) -> None:
        self._own = own_status_file

    def ports(self) -> list[int]:
        """Loopback ports of the siblings that have said they serve."""
        statuses = (
            read_status(p) for p in sorted(self._own.parent.glob("*.json")) if p != self._own
        )
        return [s["port"] for s in statuses if s is not None]

    async def fetch(self, path: str) -> list[bytes]:
        """GET `path` from every sibling at once. A sibling that does not answer (it died, or
        is being restarted) is logged and left out: its figures are gone with it."""

        async def get(port: int) -> bytes | None:
            url = f"http://127.0.0.1:{port}{path}"
            try:
                return await asyncio.to_thread(_get, url)
            except OSError as err:
                log.warning("sibling worker at %s did not answer: %s", url, err)
                return None

        bodies = await asyncio.gather(*(get(port) for port in self.ports()))
        return [b for b in bodies if b is not None]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
        return response.read()
