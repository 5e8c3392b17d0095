"""A log position that tasks can await: the log's visible (committed) position, and its durable head.

One object owns each position. Whoever moves it (the writer's caller on a single node, the leader's
replication when the in-sync replicas confirm, a follower's fetch loop when the leader reports its commit
point) calls `advance`; whoever waits for it (subscriptions, read-your-writes forwarding, replication
long-polls) awaits `reached`. Waiters sit in a heap by target position, so an advance wakes only the
waiters it satisfies, however many wait.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools


class WatchedPosition:
    def __init__(self, position: int = 0, *, monotonic: bool = True) -> None:
        self._position = position
        self._monotonic = monotonic
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._seq = itertools.count()
        self._compact_at = 64

    @property
    def position(self) -> int:
        return self._position

    def advance(self, position: int) -> bool:
        """Move to `position` if it is further; wake every waiter it satisfies. True when it moved."""
        if position <= self._position:
            return False
        self._position = position
        waiters = self._waiters
        while waiters and waiters[0][0] <= position:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(position)
        return True

    def reset(self, position: int) -> None:
        """Set a position that may move back (a follower's head after truncating an uncommitted tail)."""
        if self._monotonic:
            raise ValueError("this position never moves back")
        if position < self._position:
            self._position = position
        else:
            self.advance(position)

    def awaited(self) -> bool:
        """Whether anything waits for the position to move on."""
        return any(not waiter[2].done() for waiter in self._waiters)

    def reached(self, position: int) -> asyncio.Future:
        """A future that resolves (to the then current position) once the position is at least `position`.
        Cancel it to stop waiting."""
        future = asyncio.get_running_loop().create_future()
        if self._position >= position:
            future.set_result(self._position)
        else:
            if len(self._waiters) > self._compact_at:  # now and then, drop the waiters that gave up
                self._waiters = [w for w in self._waiters if not w[2].done()]
                heapq.heapify(self._waiters)
                self._compact_at = 2 * len(self._waiters) + 64
            heapq.heappush(self._waiters, (position, next(self._seq), future))
        return future

    async def wait_for(self, position: int, *, timeout: float | None = None) -> bool:
        """Wait (bounded by `timeout`) until the position is at least `position`; True when it is."""
        if self._position >= position:
            return True
        future = self.reached(position)
        # asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for loses a cancel that arrives as the
        # position does (the waiting task then runs on, and whoever cancelled it waits for it forever)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        finally:
            future.cancel()
        return True


async def first_reached(targets: list[tuple[WatchedPosition, int]], *, timeout: float,
                        also: asyncio.Future | None = None) -> bool:
    """Wait until any of the positions reaches its target, or `also` resolves (it is not cancelled), or
    `timeout` passes; True unless the time ran out."""
    futures = [watched.reached(target) for watched, target in targets]
    try:
        waits = futures if also is None else [*futures, also]
        if any(f.done() for f in waits):
            return True
        done, _pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for future in futures:
            future.cancel()
