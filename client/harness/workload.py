"""A write workload for fault tests: concurrent writers append with exact expected versions to their own
streams, over any node, and record every attempt in a `History` for the checker.

An append without a definite answer (503, timeout, lost connection) is retried with the same event ids
and the same expected version until it is answered or the run stops: appends are idempotent by id, so a
retry of an append that was applied returns the original reply instead of writing again.
"""
from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from typing import Any

import aiohttp

from ...ids import uuid7_bytes
from ..async_client import AsyncEvstoreClient
from .checker import Attempt, History
from ..errors import ConnectionFailed, EvstoreError, StreamNotFound, Unavailable

REQUEST_TIMEOUT = 10.0
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 1.0


class Workload:
    """`writers` tasks, each owning `streams_per_writer` streams, appending `batch` events per request
    (an int, or a (low, high) range drawn per append). Requests go round-robin over `urls`."""

    def __init__(self, urls: list[str], writers: int = 16, streams_per_writer: int = 1,
                 batch: int | tuple[int, int] = 1, *, history: History | None = None,
                 max_appends: int | None = None, stream_prefix: str | None = None, event_type: str = "Work",
                 timeout: float = REQUEST_TIMEOUT, token: str | None = None, seed: int | None = None) -> None:
        if not urls:
            raise ValueError("a workload needs at least one node URL")
        self.urls = list(urls)
        self.writers = writers
        self.streams_per_writer = streams_per_writer
        self.batch = (batch, batch) if isinstance(batch, int) else tuple(batch)
        self.history = history if history is not None else History()
        self.max_appends = max_appends  # stop by itself after this many acknowledged appends
        self.stream_prefix = stream_prefix or f"wl-{uuid.uuid4().hex[:8]}"
        self.event_type = event_type
        self.timeout = timeout
        self.token = token
        self.random = random.Random(seed)
        self.acknowledged = 0  # appends
        self.acknowledged_events = 0
        self._acknowledged_changed = asyncio.Event()
        self.errors: dict[str, int] = {}  # error code -> count, for diagnosis
        self._next_url = itertools.cycle(range(len(self.urls)))
        self._clients: list[AsyncEvstoreClient] = []

    async def wait_acknowledged(self, count: int, timeout: float) -> int:
        """Wait (bounded) until at least `count` appends are acknowledged; raises TimeoutError."""
        async def reach() -> None:
            while self.acknowledged < count:
                await self._acknowledged_changed.wait()

        await asyncio.wait_for(reach(), timeout)
        return self.acknowledged

    def stream_names(self, writer: int) -> list[str]:
        return [f"{self.stream_prefix}-w{writer}-s{k}" for k in range(self.streams_per_writer)]

    async def run(self, stop: asyncio.Event) -> None:
        """Runs until `stop` is set (or `max_appends` is reached). An append in flight when `stop` is set
        completes or times out; one still without an answer then stays "unknown" in the history."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        connector = aiohttp.TCPConnector(limit=max(4, self.writers * 2))
        async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
            self._clients = [AsyncEvstoreClient(u, session=session, timeout=self.timeout, retries=0)
                             for u in self.urls]
            await asyncio.gather(*(self._writer(w, stop) for w in range(self.writers)))

    def _client(self) -> AsyncEvstoreClient:
        return self._clients[next(self._next_url)]

    def _done(self, stop: asyncio.Event) -> bool:
        if self.max_appends is not None and self.acknowledged >= self.max_appends:
            stop.set()
        return stop.is_set()

    async def _writer(self, writer: int, stop: asyncio.Event) -> None:
        versions = {s: 0 for s in self.stream_names(writer)}
        streams = itertools.cycle(list(versions))
        sequence = 0
        while not self._done(stop):
            stream = next(streams)
            count = self.random.randint(*self.batch)
            ids = [str(uuid.UUID(bytes=raw)) for raw in uuid7_bytes(count)]
            events = [{"id": event_id, "type": self.event_type,
                       "data": {"writer": writer, "seq": sequence + i}} for i, event_id in enumerate(ids)]
            sequence += count
            attempt = self.history.record(stream, ids, versions[stream])
            reply = await self._append_until_answered(attempt, events, stop)
            if attempt.status == "ok":
                versions[stream] = reply["version"]
                self.acknowledged += 1
                self.acknowledged_events += count
                self._acknowledged_changed.set()
                self._acknowledged_changed = asyncio.Event()
            elif attempt.status == "failed":
                versions[stream] = await self._current_version(stream, stop, versions[stream])

    async def _append_until_answered(self, attempt: Attempt, events: list[dict[str, Any]],
                                     stop: asyncio.Event) -> dict | None:
        failures = 0
        while True:
            try:
                reply = await self._client().append(attempt.stream, events,
                                                    expected_version=attempt.expected_version)
            except (EvstoreError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self._count(exc)
                if not outcome_unknown(exc):  # a definite rejection: nothing was written
                    attempt.rejected({"status": exc.status, "error": exc.code, **exc.details})
                    return None
                if stop.is_set():
                    return None  # stays "unknown"
                await self._backoff(failures, exc, stop)
                failures += 1
                continue
            attempt.succeeded(reply)
            return reply

    async def _backoff(self, failures: int, exc: BaseException, stop: asyncio.Event) -> None:
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** failures)
        if isinstance(exc, Unavailable) and exc.retry_after is not None:
            delay = min(MAX_BACKOFF, max(delay, exc.retry_after))
        delay *= 0.5 + self.random.random()  # spread the writers' retries
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except asyncio.TimeoutError:
            pass

    async def _current_version(self, stream: str, stop: asyncio.Event, fallback: int) -> int:
        """The stream's version after a rejection, so the next append expects the right one."""
        failures = 0
        while not stop.is_set():
            try:
                page = await self._client().read_stream(stream, limit=1, backward=True)
                return int(page["version"])
            except StreamNotFound:
                return 0
            except (EvstoreError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self._count(exc)
                await self._backoff(failures, exc, stop)
                failures += 1
        return fallback

    def _count(self, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, EvstoreError) else type(exc).__name__
        self.errors[code] = self.errors.get(code, 0) + 1


def outcome_unknown(exc: BaseException) -> bool:
    """No definite answer: the append may or may not have been written (503, any other 5xx, no reply)."""
    if not isinstance(exc, EvstoreError) or isinstance(exc, (Unavailable, ConnectionFailed)):
        return True
    return exc.status is None or exc.status >= 500
