"""A bound on the node's open HTTP connections (--max-connections): past it, a new connection gets a 503 and is
closed, so that a client opening connections without end cannot run the node out of file descriptors or memory.

`ConnectionGate` is the listening socket's protocol factory (aiohttp's low-level `web.Server` is one itself): it
hands each accepted connection to aiohttp while fewer than the limit are open (counting it from the accept to its
close, see `Counted`), and to a `Refusal` otherwise. A refusal reads the request head (bounded in bytes and time)
and then either:
- hands the connection to aiohttp after all, when its first request is a peer's (`/v1/internal/`, signed and
  checked by its handler), a scrape (`/metrics`) or a probe (`/health/`), and fewer than RESERVED connections
  past the limit are open: as PostgreSQL keeps `superuser_reserved_connections`, so that replication and
  monitoring go on while clients fill the node (a leader refusing its followers would lose its in-sync set);
- or answers it itself (`GET /health/live` with 200, since a full node is alive and a failing liveness probe
  would make Kubernetes restart it; anything else with 503), drops whatever body follows and closes.
Refused connections being answered are bounded too (MAX_REFUSING): past that they are closed at once.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

import orjson
from aiohttp import web

from .middleware import JsonErrorHandler

REFUSAL_SECONDS = 5.0  # how long a refused connection may take to send its request head, and then to go away
MAX_HEAD_BYTES = 16 * 1024  # of a refused request's head (aiohttp's own line and field limits are 8 KiB)
MAX_REFUSING = 256  # refused connections being answered at once; past this one is closed without an answer
RESERVED = 64  # connections past the limit that peers, scrapes and probes may still open
RESERVED_PATHS = (b"/v1/internal/", b"/metrics", b"/health/")
_PENDING_SECONDS = 5.0  # an accepted connection whose transport never came (a failed accept) counts this long


def _response(status: str, body: dict, *extra: str) -> bytes:
    payload = orjson.dumps(body)
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json; charset=utf-8", f"Content-Length: {len(payload)}",
            *extra, "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def _request_line(head: bytes) -> tuple[bytes, bytes]:
    """(method, target) of a request head; empty when its first line is not a request line."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return (parts[0], parts[1]) if len(parts) == 3 else (b"", b"")


class ConnectionGate:
    """Protocol factory for `loop.create_server`: aiohttp's server while fewer than `maximum` of its connections
    are open, else a Refusal. `refused` counts the connections answered 503 or closed unanswered."""

    def __init__(self, server: web.Server, *, maximum: int, refused: Callable[[], None] = lambda: None) -> None:
        self.server = server
        self.maximum = maximum
        self.count_refused = refused  # a refusal: answered 503, or closed unanswered
        self._refusals: set[Refusal] = set()
        self.open = 0  # connections handed to aiohttp and not yet closed
        # accepted, but their transport not made yet (that comes a loop turn later): without these, one burst of
        # accepts could pass the limit
        self._pending: dict[Counted, float] = {}
        self._refusal = _response("503 Service Unavailable", {
            "error": "unavailable", "reason": "too_many_connections", "maxConnections": maximum, "retryAfter": 1,
            "message": f"this node has as many connections open as it takes ({maximum}, --max-connections): "
                       "retry, or reuse a keep-alive connection"}, "Retry-After: 1")
        self._live = _response("200 OK", {"status": "ok"})

    def __call__(self) -> asyncio.BaseProtocol:
        if self._counted() < self.maximum:
            return self._admitted()
        return Refusal(self)

    def _counted(self) -> int:
        now = time.monotonic()
        if self._pending and next(iter(self._pending.values())) < now - _PENDING_SECONDS:
            self._pending = {p: at for p, at in self._pending.items() if at >= now - _PENDING_SECONDS}
        return self.open + len(self._pending)

    def _admitted(self) -> Counted:
        handler = self.server()
        handler.__class__ = JsonErrorHandler  # aiohttp's server makes plain handlers; this one answers in JSON
        counted = Counted(self, handler)
        self._pending[counted] = time.monotonic()
        return counted

    def connected(self, counted: Counted) -> None:
        self._pending.pop(counted, None)  # gone already if its accept took longer than _PENDING_SECONDS
        self.open += 1

    def closed(self, counted: Counted) -> None:  # only ever after `connected` (asyncio's protocol contract)
        self.open -= 1

    # refused connections ----------------------------------------------------------------------------------
    def refusal_opened(self, refusal: Refusal) -> bool:
        """A refused connection is to be answered; False when MAX_REFUSING are already (close it at once)."""
        if len(self._refusals) >= MAX_REFUSING:
            return False
        self._refusals.add(refusal)
        return True

    def refusal_closed(self, refusal: Refusal) -> None:
        self._refusals.discard(refusal)

    def takes_after_all(self, head: bytes) -> bool:
        """A refused connection whose first request is a peer's, a scrape or a probe, while the reserve lasts."""
        return _request_line(head)[1].startswith(RESERVED_PATHS) and self._counted() < self.maximum + RESERVED

    def take_over(self, transport: asyncio.Transport, head: bytes) -> None:
        """Hand a refused connection to aiohttp, with what it has sent so far."""
        counted = self._admitted()
        transport.set_protocol(counted)
        counted.connection_made(transport)
        counted.data_received(head)

    def answer(self, head: bytes) -> bytes:
        method, target = _request_line(head)
        if method == b"GET" and target.partition(b"?")[0] == b"/health/live":
            return self._live
        self.count_refused()
        return self._refusal

    def close(self) -> None:
        """Close the refused connections still open (at shutdown: aiohttp closes its own)."""
        for refusal in list(self._refusals):
            refusal.abort()


class Counted(asyncio.Protocol):
    """aiohttp's handler of one connection, counted by the gate from its transport's start to its loss. The
    handler's own methods take the calls in between (bound here, so that they cost no extra call)."""

    def __init__(self, gate: ConnectionGate, handler: web.RequestHandler) -> None:
        self._gate = gate
        self._handler = handler
        self._on_lost: list[Callable[[], None]] = []
        self.data_received = handler.data_received
        self.eof_received = handler.eof_received
        self.pause_writing = handler.pause_writing
        self.resume_writing = handler.resume_writing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._gate.connected(self)
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate.closed(self)
        self._handler.connection_lost(exc)
        callbacks, self._on_lost = self._on_lost, []
        for callback in callbacks:
            callback()

    def on_lost(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when the connection closes; returns what stops that."""
        self._on_lost.append(callback)
        return lambda: self._on_lost.remove(callback) if callback in self._on_lost else None


def on_connection_lost(request: web.Request, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` once the request's connection closes (at once if it has). aiohttp tells a handler only
    when it next writes: a handler that waits long between writes (a subscription between heartbeats) learns
    it here. Returns what stops it; a no-op for a connection the gate did not make."""
    transport = request.transport
    if transport is None or transport.is_closing():
        callback()
        return lambda: None
    protocol = transport.get_protocol()
    return protocol.on_lost(callback) if isinstance(protocol, Counted) else (lambda: None)


class Refusal(asyncio.Protocol):
    """One refused connection: its request head is answered by the gate (or the gate takes it after all), the
    rest is dropped."""

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self._head = bytearray()
        self._answered = False
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if not self._gate.refusal_opened(self):
            self.abort()
            return
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_SECONDS, self.abort)

    def abort(self) -> None:
        """Close at once; an unanswered connection counts as refused."""
        if not self._answered:
            self._answered = True
            self._gate.count_refused()
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # the body of the refused request, or more requests: dropped
        self._head += data
        if b"\r\n\r\n" not in self._head:
            if len(self._head) > MAX_HEAD_BYTES:
                self.abort()
            return
        head, self._head = bytes(self._head), bytearray()
        if self._gate.takes_after_all(head):
            self._leave()
            self._gate.take_over(self._transport, head)
            return
        self._answered = True
        self._transport.write(self._gate.answer(head))
        self._arm()  # from now on, the time to read the answer and go away
        if self._transport.can_write_eof():
            # half-close: the client reads the answer and closes; closing now with a body still coming could
            # reset the connection before the answer is read
            self._transport.write_eof()
        else:
            self._transport.close()

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave()

    def _leave(self) -> None:
        self._gate.refusal_closed(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
