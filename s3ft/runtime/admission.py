"""Admission by rank: coroutines wait for something scarce (room on an engine, a judging slot), and
what frees goes to the waiter of the lowest rank, first come first served within a rank.

The generation pool and the judging steps both need it; `asyncio.PriorityQueue` and `Semaphore` do
not fit, since a grant is not a count but whatever `take` decides (an engine with room for this
request's sequences), and a waiter that is cancelled as it is granted must hand the grant back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

R = TypeVar("R")  # a request
G = TypeVar("G")  # what granting it gives


class Admission(Generic[R, G]):
    """`take(request)` grants a request now, or returns None; `give_back(grant, request)` returns a grant
    (and should call `hand_out`). Call `hand_out` whenever something frees. One event loop's waiters."""

    def __init__(self, take: Callable[[R], G | None], give_back: Callable[[G, R], None]) -> None:
        self._take, self._give_back = take, give_back
        self._waiting: list[tuple[int, int, R, asyncio.Future[G]]] = []  # a heap
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> bool:
        return bool(self._waiting)

    async def enter(self, rank: int, request: R) -> G:
        ahead = self._waiting and self._waiting[0][0] <= rank  # one waits with as low a rank
        if not ahead and (granted := self._take(request)) is not None:
            return granted
        future: asyncio.Future[G] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (rank, next(self._arrivals), request, future))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted as it was cancelled
                self._give_back(future.result(), request)
            raise

    def hand_out(self) -> None:
        """Grant the waiters in order until `take` refuses the first of them."""
        while self._waiting:
            *_, request, future = self._waiting[0]
            if future.done():  # its caller gave up
                heapq.heappop(self._waiting)
                continue
            granted = self._take(request)
            if granted is None:
                return
            heapq.heappop(self._waiting)
            future.set_result(granted)

    def fail(self, error: Exception) -> None:
        """Every waiter raises `error`: nothing will ever be granted."""
        for *_, future in self._waiting:
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
