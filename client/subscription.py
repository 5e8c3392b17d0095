"""Transient subscriptions over Server-Sent Events (`GET /v1/subscribe`): an async iterator that resumes.

`AsyncEvstoreClient.subscribe(...)` returns a `Subscription`. It yields events in log order (each the
dict the server sends inside `{"event": ...}`); with `include_control=True` it yields every message as
the server sends it instead: `{"event": {...}}`, `{"caughtUp": True, "position": P}` and
`{"heartbeat": True, "position": P}`. Either way `caught_up` turns true when the caller reaches the
caughtUp message (everything yielded before it was replayed from the log): with the last replayed event
when the message had arrived by then, else on the next call; `include_control=True` shows the exact point.

`position` is the highest position the caller has been taken past: the last event yielded, or a later
one from the caughtUp message or a heartbeat (the last position the server scanned, so a filtered
subscription does not rescan what it skipped) that followed it; a new subscription with `after=position`
continues exactly there. When the connection drops or the server ends the stream, the subscription
reconnects with `Last-Event-ID` set to the last position received (the server resumes after it,
whatever the start parameters) after a bounded exponential backoff, and never yields an event twice.
Comment lines (`: ...`) are accepted as heartbeats too. A message `{"error": code, "position": P, ...}`
(SSE event `closed` or `error`) ends the stream: `unavailable` (the node stops or cannot serve now) is
resumed like a drop, any other code ends the iteration with its typed error.

The first connection reports failure at once (a wrong URL or a stopped node should not hang the
caller); later ones are retried until `reconnect_timeout` seconds pass without success (None: forever).
`nodes` names other nodes of the same store: an unreachable or stopping node hands over to the next
(positions are the same on every node, so the resume is exact).
`stop()` ends the iteration from anywhere on the client's loop; leaving `async with` stops it too.
"""
from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import TYPE_CHECKING, Any, Iterable

import aiohttp
import orjson

from .errors import ERRORS_BY_CODE, ConnectionFailed, EvstoreError, ServerError, Unavailable, error_from_payload
from .protocol import has_long_number
from .reconnect import NodeRing, Reconnecting
from .sse import SSEParser

if TYPE_CHECKING:
    from .async_client import AsyncEvstoreClient


def message_position(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Subscription:
    """An async iterator (and async context manager) over one transient subscription; see the module doc."""

    def __init__(self, client: "AsyncEvstoreClient", params: list[tuple[str, str]], *, include_control: bool,
                 reconnect_timeout: float | None, idle_timeout: float | None, max_backoff: float,
                 nodes: Iterable[str] = ()) -> None:
        self._client = client
        self._nodes = NodeRing(client.url, nodes)
        self._params = params
        self._include_control = include_control
        self._idle_timeout = idle_timeout
        self._policy = Reconnecting(reconnect_timeout=reconnect_timeout, max_backoff=max_backoff)
        self.position: int | None = None  # what the caller has been given (see `_received` for the wire)
        self.caught_up = False
        self._received: int | None = None  # the resume point on the wire: Last-Event-ID and repeats
        self.repeats_dropped = 0
        self._response: aiohttp.ClientResponse | None = None
        self._parser = SSEParser()
        self._buffer = b""
        # (message or None, position covered, caught up) in arrival order; None: nothing to yield, but
        # `position` and `caught_up` move only when the caller reaches it
        self._ready: deque[tuple[dict | None, int | None, bool]] = deque()
        self._failure: EvstoreError | None = None

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
        while True:
            while self._ready:
                item = self._take_ready()
                if item is not None:
                    # markers right behind it (a caughtUp, heartbeats) are passed with it
                    while self._ready and self._ready[0][0] is None:
                        self._take_ready()
                    return item
            if self._failure is not None:
                failure, self._failure = self._failure, None
                self.stop()
                raise failure
            if self.stopped:
                raise StopAsyncIteration
            await self._read_more()

    def _take_ready(self) -> dict | None:
        item, position, caught_up = self._ready.popleft()
        if position is not None and (self.position is None or position > self.position):
            self.position = position
        self.caught_up = self.caught_up or caught_up
        return item

    # -- the connection --------------------------------------------------------------------

    async def _connect(self) -> None:
        client = self._client
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=client.timeout, sock_read=self._idle_timeout)
        while not self.stopped:
            base = self._nodes.current
            headers = {"Accept": "text/event-stream"}
            if self._received is not None:
                headers["Last-Event-ID"] = str(self._received)
            try:
                resp = await client._http().get(client._url("/v1/subscribe", self._params, base=base),
                                                headers=headers, timeout=timeout)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                error: EvstoreError = ConnectionFailed(base, f"cannot connect to {base}: {exc}")
                if not self._nodes.next() and not self._policy.connected_once:
                    raise error from exc  # the first connection: every node was tried once
                if not self._policy.connected_once:
                    continue
            else:
                if resp.status < 300 and resp.content_type == "text/event-stream":
                    self._nodes.reached()
                    self._opened(resp)
                    return
                payload = await resp.read()
                resp.release()
                if resp.status < 300:
                    raise ServerError(resp.status, "not_event_stream",
                                      f"/v1/subscribe answered {resp.content_type}, not text/event-stream")
                error = error_from_payload(resp.status, payload)
                if isinstance(error, Unavailable):
                    self._nodes.next()
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
        if self.stopped or self._failure is not None:
            return
        if not chunk:  # the connection dropped or the server ended the stream: resume from `position`
            if self._response is response:
                self._close_response()
            if self._failure is None:
                await self._policy.dropped()
            return
        self._policy.healthy()
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        # SSE lines end in LF or CRLF (a lone CR, which the format also allows, is not supported)
        data = self._buffer + chunk
        if b"\r" in data:
            *lines, self._buffer = data.split(b"\n")
            for raw in lines:
                self._line(raw.rstrip(b"\r"))
            return
        *blocks, self._buffer = data.split(b"\n\n")
        decode = (self._client.decode if self._client.exact_numbers
                  else json.loads if has_long_number(data) else orjson.loads)
        for block in blocks:
            # the server's own frame, `id: P` then one `data:` line, parsed directly (the catch-up hot path)
            newline = block.find(b"\n")
            if block.startswith(b"id: ") and block.startswith(b"data: ", newline + 1) and \
                    block.find(b"\n", newline + 1) < 0:
                try:
                    body = decode(block[newline + 7:])
                except ValueError:
                    continue
                self._dispatch("message", body, block[4:newline].decode("ascii", "replace"))
                continue
            for raw in block.split(b"\n"):
                self._line(raw)
            self._line(b"")

    def _line(self, raw: bytes) -> None:
        message = self._parser.feed(raw.decode("utf-8", "replace"))
        if message is None:
            return
        try:
            body = self._client.decode(message.data)
        except ValueError:
            return  # not JSON: nothing the contract names; skipped
        self._dispatch(message.event, body, message.id)

    def _advance(self, position: int | None) -> None:
        if position is not None and (self._received is None or position > self._received):
            self._received = position

    def _dispatch(self, name: str, body: Any, last_id: str | None) -> None:
        if not isinstance(body, dict):
            return
        event = body.get("event")
        if isinstance(event, dict):
            position = message_position(event.get("position"))
            if position is not None and self._received is not None and position <= self._received:
                self.repeats_dropped += 1
                return
            self._advance(position)
            self._ready.append((body if self._include_control else event, self._received, False))
            return
        if last_id is not None and last_id.isdigit():
            self._advance(int(last_id))
        caught_up = body.get("caughtUp") is True
        if caught_up or body.get("heartbeat") is True or name == "heartbeat":
            self._advance(message_position(body.get("position")))
        elif isinstance(body.get("error"), str):
            self._server_error(body)
            return
        self._ready.append((body if self._include_control else None, self._received, caught_up))

    def _server_error(self, body: dict) -> None:
        """The server ended the stream with a reason: `unavailable` (the node stops, or cannot serve for
        now) is resumed elsewhere or later; anything else ends the iteration with its typed error."""
        error = ERRORS_BY_CODE.get(body["error"], ServerError)(
            None, body["error"], str(body.get("message") or body["error"]),
            {k: v for k, v in body.items() if k not in ("error", "message")})
        if isinstance(error, Unavailable):
            self._nodes.next()  # e.g. the node is stopping: resume on the next one, if there is another
            return
        self._failure = error
        self._close_response()
