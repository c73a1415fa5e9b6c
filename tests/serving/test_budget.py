"""The Python front end's request-bytes budget (serving/budget.py) on its own, with reads that
never end and the process's resident memory set by hand: reads wait for room, a slow read
counts what the process grew by, the newest slow reads are shed past the limit, and served
copies wait in order. (The server-level floods are tests/serving/test_memory_bound.py.)"""

from __future__ import annotations

import asyncio

import pytest

from core.errors import QueueFull
from serving.budget import SLOW_S, RequestBudget

CAP = 50  # a message at the cap: reads count 100 (received twice), serving copies 150
LIMIT = 300  # so 150 for what calls receive, 150 for serving copies


def _budget(resident: list[int]) -> RequestBudget:
    budget = RequestBudget(LIMIT, CAP)
    budget._resident = lambda: resident[0]  # type: ignore[method-assign]
    return budget


async def _never() -> bytes:
    await asyncio.Event().wait()
    return b""


def test_reads_wait_for_room_and_the_newest_slow_read_is_shed() -> None:
    async def scenario() -> None:
        resident = [0]
        budget = _budget(resident)
        first = asyncio.ensure_future(budget.read(_never, "busy"))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(budget.read(_never, "busy"))
        await asyncio.sleep(0.05)
        assert len(budget._reading) == 1  # no room beside a fresh read: the second waits
        await asyncio.sleep(SLOW_S)
        assert len(budget._reading) == 2  # the first is slow and grew nothing: room
        resident[0] = 400  # the process grew past the limit while both read
        await asyncio.sleep(SLOW_S + 0.05)
        with pytest.raises(QueueFull, match="busy"):
            await second  # the newest slow read
        assert not first.done() and len(budget._reading) == 1  # alone, it may go on
        assert budget.shed == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not budget._reading and budget.held == 0

    asyncio.run(scenario())


def test_a_message_holds_its_copies_until_released_and_the_next_waits_in_order() -> None:
    async def scenario() -> None:
        budget = _budget([0])

        async def message() -> bytes:
            return bytes(CAP)

        _, held_one = await budget.read(message, "busy")
        assert held_one == (2 * CAP, 3 * CAP) and budget.held == 5 * CAP
        two = asyncio.ensure_future(budget.read(message, "busy"))
        await asyncio.sleep(0.01)
        assert not two.done()  # its serving copies do not fit beside the first's
        budget.release(held_one)
        _, held_two = await asyncio.wait_for(two, 1)
        budget.release(held_two)
        assert budget.held == 0

    asyncio.run(scenario())


def test_the_http_port_takes_from_the_same_budget() -> None:
    async def scenario() -> None:
        budget = _budget([0])
        assert budget.take(200, 0) and budget.held == 200
        assert not budget.take(200, 0)  # another request: past the limit
        assert budget.take(200, 200)  # the one holding everything may go on
        budget.give(400)
        reading = asyncio.ensure_future(budget.read(_never, "busy"))
        await asyncio.sleep(0.01)
        assert not budget.take(250, 0)  # a gRPC read in progress counts a message at the cap
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert budget.take(250, 0)

    asyncio.run(scenario())
