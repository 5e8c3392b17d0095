"""The async client's request methods run on the calling thread, with no event loop.

`BlockingTransport` is an `AsyncEvstoreClient` whose two I/O steps (`_exchange`, `_pause`) block
instead of awaiting, so each of its coroutine methods finishes on its first step: `complete()` runs
one. Every method, its request building, retries and error mapping are the async client's own; only
the bytes move differently, over the standard library's `http.client` with keep-alive connections
kept in a small pool shared by threads. The blocking client sends its requests this way: a request
costs no hand-off to a loop thread and back, and no aiohttp client machinery (about half of a
trivial call's client CPU; bench/RESULTS.md, "The blocking client's requests").
"""
from __future__ import annotations

import http.client
import select
import socket
import threading
import time
from typing import Any, Coroutine, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from .async_client import AsyncEvstoreClient
from .errors import ConnectionFailed

T = TypeVar("T")

# A reused keep-alive connection the server closed just as it was taken fails like this before any reply;
# an idempotent request is then sent again on another connection (as aiohttp does), any other is not.
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def complete(step: Coroutine[Any, Any, T] | Any) -> T:
    """The result of a coroutine (or an async generator's step) that never suspends."""
    try:
        step.send(None)
    except StopIteration as finished:
        return finished.value
    step.close()
    raise RuntimeError("a blocking client call waited for something other than its own request")


class ConnectionPool:
    """Idle keep-alive connections to one node: a request takes one (or opens one) and gives it back
    once it has read the whole reply; at most `size` are kept idle."""

    def __init__(self, url: str, *, size: int) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self._size = size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self, *, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """A connection, and whether it was used before."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._connection_type(self._host, self._port, timeout=timeout), False
            if connection.sock is not None and select.select([connection.sock], [], [], 0)[0]:
                connection.close()  # readable while idle: the server closed it (or sent what nobody asked for)
                continue
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            return connection, True

    def give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._size:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections; a request still in flight closes its own when it ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class BlockingTransport(AsyncEvstoreClient):
    """An async client whose requests block the calling thread; run its methods with `complete()`.
    Thread-safe. `timeout` bounds connecting and each wait for the server's bytes."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0, retries: int = 5,
                 max_retry_delay: float = 5.0, max_connections: int = 100, exact_numbers: bool = False) -> None:
        super().__init__(url, token=token, timeout=timeout, retries=retries, max_retry_delay=max_retry_delay,
                         max_connections=max_connections, exact_numbers=exact_numbers)
        self._pool = ConnectionPool(self.url, size=max_connections)
        self._headers = {"Accept": "application/json"}
        if self.token:
            self._headers["Authorization"] = f"Bearer {self.token}"

    def close_connections(self) -> None:
        self._pool.close()

    async def _exchange(self, method: str, path: str, *, params: list[tuple[str, str]] | None,
                        data: bytes | None, timeout: float) -> tuple[int, bytes]:
        target = self._pool.base_path + path + ("?" + urlencode(params, quote_via=quote) if params else "")
        headers = {**self._headers, "Content-Type": "application/json"} if data is not None else self._headers
        while True:
            connection, reused = self._pool.take(timeout=timeout)
            try:
                try:
                    connection.request(method, target, body=data, headers=headers)
                    response = connection.getresponse()
                except _STALE_CONNECTION:
                    if reused and method in _IDEMPOTENT:
                        connection.close()
                        continue
                    raise
                payload = response.read()
            except socket.timeout as exc:
                connection.close()
                raise ConnectionFailed(self.url, f"no reply from {self.url} within {timeout}s") from exc
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise ConnectionFailed(self.url, f"cannot connect to {self.url}: {exc}") from exc
            except BaseException:
                connection.close()
                raise
            if response.will_close:
                connection.close()
            else:
                self._pool.give_back(connection)
            return response.status, payload

    async def _pause(self, seconds: float) -> None:
        time.sleep(seconds)
