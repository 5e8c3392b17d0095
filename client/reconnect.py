"""The reconnect policy of subscriptions and persistent consumers: which failures are worth another
attempt, a bounded exponential backoff, a deadline, and waits that `stop()` cuts short."""
from __future__ import annotations

import asyncio
import time
from typing import Iterable

from .errors import ConnectionFailed, EvstoreError, Unavailable

FIRST_BACKOFF = 0.1


def backoff_delay(failures: int, *, first: float = FIRST_BACKOFF, cap: float, hinted: float | None = None) -> float:
    """Seconds to wait before attempt number `failures` (1-based) after a failure: the server's
    retryAfter if it gave one, else first, 2*first, 4*first, ...; never more than `cap`."""
    delay = hinted if hinted is not None else first * (2 ** max(0, failures - 1))
    return max(0.0, min(delay, cap))


def transient(error: EvstoreError) -> bool:
    """Worth another attempt: no connection, 503, or a server fault; a 4xx answer stays what it is."""
    return isinstance(error, (ConnectionFailed, Unavailable)) or (error.status or 0) >= 500


class Reconnecting:
    """State of one subscription's connection attempts.

    Before the first successful connection only 503 is retried (as any request of the client), so a wrong
    URL or a stopped node is reported at once. After it, a drop is followed by an immediate reconnect,
    and every further failure or unproductive connection (one that ended before anything arrived) by a
    growing wait, until `reconnect_timeout` seconds pass without a productive connection (None: never).
    """

    def __init__(self, *, reconnect_timeout: float | None, max_backoff: float) -> None:
        self.reconnect_timeout = reconnect_timeout
        self.max_backoff = max_backoff
        self.reconnects = 0
        self.connected_once = False
        self.stopped = False
        self._failures = 0
        self._down_since: float | None = None
        self._stop_event: asyncio.Event | None = None

    def mark_stopped(self) -> None:
        self.stopped = True
        if self._stop_event is not None:
            self._stop_event.set()

    def healthy(self) -> None:
        """Something arrived: the next drop starts the backoff from the beginning."""
        self._failures = 0
        self._down_since = None

    def connected(self) -> None:
        if self.connected_once:
            self.reconnects += 1
        self.connected_once = True

    async def dropped(self) -> None:
        """The connection ended: wait before the next attempt (right away after a productive one)."""
        self._down()
        await self._wait(None)

    async def after_failure(self, error: EvstoreError, *, initial_retries: int) -> None:
        """Wait before the next attempt, or raise `error` when the policy gives up."""
        now = self._down()
        if not transient(error):
            raise error
        if not self.connected_once:
            if not isinstance(error, Unavailable) or self._failures > initial_retries:
                raise error
        elif self.reconnect_timeout is not None and now - self._down_since >= self.reconnect_timeout:
            raise error
        await self._wait(error.retry_after if isinstance(error, Unavailable) else None)

    def _down(self) -> float:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._failures += 1
        return now

    async def _wait(self, hinted: float | None) -> None:
        if self.connected_once and self._failures == 1 and hinted is None:
            return
        delay = backoff_delay(self._failures - (1 if self.connected_once else 0), cap=self.max_backoff,
                              hinted=hinted)
        if self.connected_once and self.reconnect_timeout is not None and self._down_since is not None:
            delay = min(delay, max(0.0, self._down_since + self.reconnect_timeout - time.monotonic()))
        if delay <= 0 or self.stopped:
            return
        if self._stop_event is None:
            self._stop_event = asyncio.Event()
        try:
            async with asyncio.timeout(delay):
                await self._stop_event.wait()
        except asyncio.TimeoutError:
            pass


class NodeRing:
    """The node URLs a subscription may use, the client's own first: a node that cannot be reached (or
    says it is stopping) hands over to the next, since every node of a store serves the same log."""

    def __init__(self, first: str, others: Iterable[str] = ()) -> None:
        self.urls = list(dict.fromkeys([first.rstrip("/"), *(u.rstrip("/") for u in others)]))
        self._index = 0
        self._tried = 1

    @property
    def current(self) -> str:
        return self.urls[self._index]

    def next(self) -> bool:
        """Move to the next node; False once every node was tried since the last success."""
        self._index = (self._index + 1) % len(self.urls)
        self._tried += 1
        return self._tried <= len(self.urls)

    def reached(self) -> None:
        self._tried = 1
