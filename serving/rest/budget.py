"""What the HTTP port takes request bytes from (`--max-request-bytes-in-flight`): the gRPC
port's budget, so that both ports flooded at once hold one budget's worth. That is the native
front end's (`SharedBudget` in serving/native/frontend.py), or the Python front end's
(`RequestBudget` in serving/budget.py).

HTTP/1.1 lets the server read a body at its own pace (aiohttp stops reading a socket while its
buffer is full), so nothing arrives that the application has not asked for: a request's bytes
are taken as they are read, and its serving copies once it has all arrived; everything goes
back when its call ends. A request that would pass the limit while others hold bytes is refused
(429); one that holds nothing else may always go on, so that a body at the message cap is
served even when it alone passes the limit.
"""

from __future__ import annotations

from typing import Protocol


class Budget(Protocol):
    """The port's view of a budget (bytes, copies included)."""

    @property
    def limit(self) -> int:
        """The bytes requests may hold (0: no limit)."""
        ...

    @property
    def held(self) -> int:
        """The bytes they hold now."""
        ...

    def take(self, n: int, mine: int) -> bool:
        """Take `n` bytes more for a request that holds `mine` already: False, taking
        nothing, when that would pass the limit while other requests hold bytes too."""
        ...

    def give(self, n: int) -> None:
        """Give back `n` bytes."""
        ...
