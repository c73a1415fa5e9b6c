"""The HTTP port's budget of request bytes (`--max-request-bytes-in-flight`).

HTTP/1.1 lets the server read a body as slowly as it likes (aiohttp stops reading a socket
while its buffer is full), so, unlike gRPC's transport, nothing arrives that the application
has not asked for: a request's bytes are taken from the budget as they are read, and its
serving copies once it has all arrived; everything goes back when its call ends. A request
that would pass the limit while others hold bytes is refused (429); one that holds nothing
else may always go on, so that a body at the message cap is served even when it alone
passes the limit.

Behind the native front end the port takes from that front end's budget (`SharedBudget` in
serving/native/frontend.py), so that the gRPC and HTTP ports flooded at once hold one budget's
worth, not two; without it, from its own `ByteBudget`, which runs on the event loop: no lock.
"""

from __future__ import annotations

from typing import Protocol


class Budget(Protocol):
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


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no limit
        self.held = 0

    def take(self, n: int, mine: int) -> bool:
        if self.limit and self.held + n > self.limit and self.held > mine:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n
