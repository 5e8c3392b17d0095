"""Blocking evstore client: the async client run on a private event loop in a daemon thread.

Every public method of `AsyncEvstoreClient` exists here with the same signature; coroutine
methods return their result, async iterators become plain iterators. Works from plain scripts
and from code that already runs an event loop (the loop is never shared).
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from typing import Any, AsyncIterator, Callable, Coroutine, Iterator, TypeVar

from .async_client import DEFAULT_URL, AsyncEvstoreClient

T = TypeVar("T")


class EvstoreClient:
    """Blocking client. Use as a context manager, or call `close()` when done."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0,
                 retries: int = 5, max_retry_delay: float = 5.0, max_connections: int = 100) -> None:
        self._async = AsyncEvstoreClient(url, token=token, timeout=timeout, retries=retries,
                                         max_retry_delay=max_retry_delay, max_connections=max_connections)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="evstore-client", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        return self._async.url

    @property
    def async_client(self) -> AsyncEvstoreClient:
        """The underlying async client; only use it on this client's loop."""
        return self._async

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("EvstoreClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> tuple[bool, Any]:
            try:
                return True, await agen.__anext__()
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item
        finally:
            if not self._closed:
                self._run(agen.aclose())  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close the HTTP session and stop the loop thread. Safe to call twice."""
        if self._closed:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result()
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> "EvstoreClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _blocking(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: EvstoreClient, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self._async, name)(*args, **kwargs))
    return call


def _iterating(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: EvstoreClient, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._iterate(getattr(self._async, name)(*args, **kwargs))
    return call


def _mirror_async_methods() -> None:
    for name, member in vars(AsyncEvstoreClient).items():
        if name.startswith("_") or name == "close" or hasattr(EvstoreClient, name):
            continue
        if inspect.isasyncgenfunction(member):
            setattr(EvstoreClient, name, _iterating(name, member))
        elif inspect.iscoroutinefunction(member):
            setattr(EvstoreClient, name, _blocking(name, member))


_mirror_async_methods()
