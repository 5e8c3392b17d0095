"""Transient subscriptions over Server-Sent Events (`GET /v1/subscribe`): an async iterator that resumes.

`AsyncEvstoreClient.subscribe(...)` returns a `Subscription`. It yields events in log order (each the
dict the server sends inside `{"event": ...}`); with `include_control=True` it yields every message as
the server sends it instead: `{"event": {...}}`, `{"caughtUp": True, "position": P}` and
`{"heartbeat": True, "position": P}`. Either way `caught_up` turns true at the caughtUp message.

`position` is the resume point: the highest position the subscription has covered, from an event, the
caughtUp message, a heartbeat (which carries the last position the server scanned, so a filtered
subscription does not rescan what it skipped) or an SSE `id:`. When the connection drops or the server
ends the stream, the subscription reconnects with `Last-Event-ID: <position>` (the server resumes after
it, whatever the start parameters) after a bounded exponential backoff, and an event at or below
`position` is never yielded twice. Comment lines (`: ...`) are accepted as heartbeats too.

The first connection reports failure at once (a wrong URL or a stopped node should not hang the
caller); later ones are retried until `reconnect_timeout` seconds pass without success (None: forever).
`stop()` ends the iteration from anywhere on the client's loop; leaving `async with` stops it too.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import aiohttp

from .errors import ConnectionFailed, EvstoreError, ServerError, Unavailable, error_from_payload
from .protocol import loads
from .sse import SSEMessage, SSEParser

if TYPE_CHECKING:
    from .async_client import AsyncEvstoreClient

FIRST_BACKOFF = 0.1


def backoff_delay(failures: int, *, first: float = FIRST_BACKOFF, cap: float, hinted: float | None = None) -> float:
    """Seconds to wait before reconnect attempt number `failures` (1-based): the server's retryAfter if it
    gave one, else first, 2*first, 4*first, ...; never more than `cap`."""
    delay = hinted if hinted is not None else first * (2 ** max(0, failures - 1))
    return max(0.0, min(delay, cap))




def message_position(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def transient(error: EvstoreError) -> bool:
    """Worth another attempt: no connection, 503, or a server fault; a 4xx answer stays what it is."""
    return isinstance(error, (ConnectionFailed, Unavailable)) or (error.status or 0) >= 500


class Reconnecting:
    """The reconnect policy shared by subscriptions and persistent consumers: bounded backoff,
    a deadline after the first success, and a sleep that `stop()` cuts short."""

    def __init__(self, *, reconnect_timeout: float | None, max_backoff: float) -> None:
        self.reconnect_timeout = reconnect_timeout
        self.max_backoff = max_backoff
        self.reconnects = 0
        self.connected_once = False
        self.stopped = False
        self._failures = 0
        self._down_since: float | None = None
        self._stop_event: asyncio.Event | None = None

    def _stopping(self) -> asyncio.Event:
        if self._stop_event is None:
            self._stop_event = asyncio.Event()
            if self.stopped:
                self._stop_event.set()
        return self._stop_event

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

    async def after_failure(self, error: EvstoreError, *, initial_retries: int) -> None:
        """Wait before the next attempt, or raise `error` when the policy gives up."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._failures += 1
        if not transient(error):
            raise error
        if not self.connected_once:
            # before the first success: only 503 is retried, as for any request of the client
            if not isinstance(error, Unavailable) or self._failures > initial_retries:
                raise error
        elif self.reconnect_timeout is not None and now - self._down_since >= self.reconnect_timeout:
            raise error
        hinted = error.retry_after if isinstance(error, Unavailable) else None
        delay = 0.0 if self._failures == 1 and hinted is None and self.connected_once else \
            backoff_delay(self._failures, cap=self.max_backoff, hinted=hinted)
        if self.reconnect_timeout is not None and self.connected_once:
            delay = min(delay, max(0.0, self._down_since + self.reconnect_timeout - now))
        if delay > 0:
            try:
                await asyncio.wait_for(self._stopping().wait(), delay)
            except asyncio.TimeoutError:
                pass


class Subscription:
    """An async iterator (and async context manager) over one transient subscription; see the module doc."""

    def __init__(self, client: "AsyncEvstoreClient", params: list[tuple[str, str]], *, include_control: bool,
                 reconnect_timeout: float | None, idle_timeout: float | None, max_backoff: float) -> None:
        self._client = client
        self._params = params
        self._include_control = include_control
        self._idle_timeout = idle_timeout
        self._policy = Reconnecting(reconnect_timeout=reconnect_timeout, max_backoff=max_backoff)
        self.position: int | None = None
        self.caught_up = False
        self.repeats_dropped = 0
        self._response: aiohttp.ClientResponse | None = None
        self._parser = SSEParser()
        self._buffer = b""
        self._ready: deque[dict] = deque()

    # -- the public face -------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self._policy.stopped

    @property
    def reconnects(self) -> int:
        """How many times the subscription connected again after a drop."""
        return self._policy.reconnects

    def stop(self) -> None:
        """End the iteration (a pending `__anext__` raises StopAsyncIteration). Safe to call twice."""
        self._policy.mark_stopped()
        self._ready.clear()
        self._close_response()

    async def aclose(self) -> None:
        self.stop()

    async def connect(self) -> "Subscription":
        """Open the stream now (iteration does it on demand); raises the server's error, if any."""
        if self._response is None and not self.stopped:
            await self._connect()
        return self

    async def __aenter__(self) -> "Subscription":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> dict:
        while not self._ready:
            if self.stopped:
                raise StopAsyncIteration
            await self._read_more()
        return self._ready.popleft()

    # -- the connection --------------------------------------------------------------------

    async def _connect(self) -> None:
        client = self._client
        url = client._url("/v1/subscribe", self._params)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=client.timeout, sock_read=self._idle_timeout)
        while not self.stopped:
            headers = {"Accept": "text/event-stream"}
            if self.position is not None:
                headers["Last-Event-ID"] = str(self.position)
            try:
                resp = await client._http().get(url, headers=headers, timeout=timeout)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                if not self._policy.connected_once:
                    raise ConnectionFailed(client.url, f"cannot connect to {client.url}: {exc}") from exc
                error: EvstoreError = ConnectionFailed(client.url, f"cannot connect to {client.url}: {exc}")
            else:
                if resp.status < 300 and resp.content_type == "text/event-stream":
                    self._opened(resp)
                    return
                payload = await resp.read()
                resp.release()
                if resp.status < 300:
                    raise ServerError(resp.status, "not_event_stream",
                                      f"/v1/subscribe answered {resp.content_type}, not text/event-stream")
                error = error_from_payload(resp.status, payload)
            await self._policy.after_failure(error, initial_retries=client.retries)

    def _opened(self, resp: aiohttp.ClientResponse) -> None:
        self._response = resp
        self._parser = SSEParser()
        self._buffer = b""
        self._policy.connected()
        if self.stopped:  # stop() ran while the request was in flight
            self._close_response()

    def _close_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    async def _read_more(self) -> None:
        if self._response is None:
            await self._connect()
            if self._response is None:
                return
        response = self._response
        try:
            chunk = await response.content.readany()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            chunk = b""
        if self.stopped:
            return
        if not chunk:  # the connection dropped or the server ended the stream: resume from `position`
            if self._response is response:
                self._close_response()
            return
        self._policy.healthy()
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        # SSE lines end in LF or CRLF (a lone CR, which the format also allows, is not supported)
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        for raw in lines:
            message = self._parser.feed(raw.rstrip(b"\r").decode("utf-8", "replace"))
            if message is not None:
                self._dispatch(message)

    def _advance(self, position: int | None) -> None:
        if position is not None and (self.position is None or position > self.position):
            self.position = position

    def _dispatch(self, message: SSEMessage) -> None:
        try:
            body = loads(message.data)
        except ValueError:
            return  # not JSON: nothing the contract names; skipped
        if not isinstance(body, dict):
            return
        event = body.get("event")
        if isinstance(event, dict):
            position = message_position(event.get("position"))
            if position is not None and self.position is not None and position <= self.position:
                self.repeats_dropped += 1
                return
            self._advance(position)
            self._ready.append(body if self._include_control else event)
            return
        if message.id is not None and message.id.isdigit():
            self._advance(int(message.id))
        if body.get("caughtUp") is True:
            self.caught_up = True
            self._advance(message_position(body.get("position")))
        elif body.get("heartbeat") is True or message.event == "heartbeat":
            self._advance(message_position(body.get("position")))
        if self._include_control:
            self._ready.append(body)
