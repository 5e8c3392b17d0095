"""Blocking evstore client.

Every public method of `AsyncEvstoreClient` exists here with the same signature; coroutine
methods return their result, async iterators become plain iterators. Requests are sent from the
calling thread (`blocking.BlockingTransport`: the async client's own methods, over blocking
connections); subscriptions and consumers run the async client on a private event loop in a daemon
thread. Works from plain scripts and from code that already runs an event loop (the loop is never
shared).
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import inspect
import sys
import threading
import weakref
from typing import Any, Callable, Coroutine, Iterable, Iterator, TypeVar

from .async_client import AsyncEvstoreClient, connection_settings
from .blocking import BlockingTransport, complete
from .consumer import Delivery

T = TypeVar("T")

CLOSE_WAIT = 5.0  # seconds a close waits for the loop thread to close its connections and stop
_open_clients: "weakref.WeakSet[EvstoreClient]" = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    """Close the clients still open at interpreter exit while their loop threads still run: a daemon thread
    stops running once finalization begins, and a close from a __del__ then (eventsourcing's Application
    closes its recorders so) would wait for it in vain."""
    for client in list(_open_clients):
        client.close()


class EvstoreClient:
    """Blocking client. Use as a context manager, or call `close()` when done."""

    def __init__(self, url: str | None = None, *, token: str | None = None, timeout: float = 30.0,
                 retries: int = 5, max_retry_delay: float = 5.0, max_connections: int = 100,
                 exact_numbers: bool = False) -> None:
        url, token = connection_settings(url, token)
        self._async = AsyncEvstoreClient(url, token=token, timeout=timeout, retries=retries,
                                         max_retry_delay=max_retry_delay, max_connections=max_connections,
                                         exact_numbers=exact_numbers)
        self._direct = BlockingTransport(url, token=token, timeout=timeout, retries=retries,
                                         max_retry_delay=max_retry_delay, max_connections=max_connections,
                                         exact_numbers=exact_numbers)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="evstore-client", daemon=True)
        self._thread.start()
        self._closed = False
        _open_clients.add(self)

    @property
    def url(self) -> str:
        return self._async.url

    @property
    def token(self) -> str | None:
        return self._async.token

    @property
    def async_client(self) -> AsyncEvstoreClient:
        """The underlying async client; only use it on this client's loop."""
        return self._async

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("EvstoreClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """The async client's method `name`, run on this thread through the blocking transport."""
        if self._closed:
            raise RuntimeError("EvstoreClient is closed")
        return complete(getattr(self._direct, name)(*args, **kwargs))

    def _iterate_direct(self, name: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """The async client's async generator `name`, stepped on this thread."""
        if self._closed:
            raise RuntimeError("EvstoreClient is closed")
        agen = getattr(self._direct, name)(*args, **kwargs)
        try:
            while True:
                try:
                    item = complete(agen.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            complete(agen.aclose())

    def close(self) -> None:
        """Close the connections and the loop thread's HTTP session, and stop that thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _open_clients.discard(self)
        self._direct.close_connections()
        if sys.is_finalizing() or not self._thread.is_alive():
            return  # the loop thread runs no more: nothing of it to wait for (the process is ending)
        try:
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result(timeout=CLOSE_WAIT)
        except concurrent.futures.TimeoutError:
            pass  # a loop that does not answer: stop it all the same
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=CLOSE_WAIT)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> "EvstoreClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SyncIterator:
    """A blocking face of an async subscription or consumer living on the client's loop."""

    def __init__(self, client: EvstoreClient, live: Any) -> None:
        self._client = client
        self._live = live

    def __enter__(self) -> Any:
        self._client._run(self._live.connect())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __iter__(self) -> Any:
        return self

    def _next(self) -> Any:
        async def step() -> tuple[bool, Any]:
            try:
                return True, await self._live.__anext__()
            except StopAsyncIteration:
                return False, None

        if self._client._closed:
            raise StopIteration
        more, item = self._client._run(step())
        if not more:
            raise StopIteration
        return item

    def stop(self) -> None:
        """End the iteration; a `next()` blocked in another thread returns (StopIteration). Safe to call twice."""
        if not self._client._closed:
            self._client._loop.call_soon_threadsafe(self._live.stop)

    @property
    def stopped(self) -> bool:
        return self._live.stopped

    @property
    def reconnects(self) -> int:
        return self._live.reconnects


class SyncSubscription(_SyncIterator):
    """Events of a transient subscription (see evstore.client.subscription), blocking."""

    def __next__(self) -> dict:
        return self._next()

    @property
    def position(self) -> int | None:
        return self._live.position

    @property
    def caught_up(self) -> bool:
        return self._live.caught_up


class SyncDelivery:
    """One delivery of a persistent subscription, with blocking `ack()` / `nack(action)`."""

    __slots__ = ("_client", "_delivery")

    def __init__(self, client: EvstoreClient, delivery: Delivery) -> None:
        self._client = client
        self._delivery = delivery

    @property
    def delivery_id(self) -> str:
        return self._delivery.delivery_id

    @property
    def attempt(self) -> int:
        return self._delivery.attempt

    @property
    def event(self) -> dict:
        return self._delivery.event

    def ack(self) -> bool:
        return self._client._run(self._delivery.ack())

    def nack(self, action: str = "retry") -> bool:
        return self._client._run(self._delivery.nack(action))

    def __repr__(self) -> str:
        return repr(self._delivery)


class SyncConsumer(_SyncIterator):
    """Deliveries of a persistent subscription (see evstore.client.consumer), blocking."""

    def __next__(self) -> SyncDelivery:
        return SyncDelivery(self._client, self._next())

    @property
    def name(self) -> str:
        return self._live.name

    def ack(self, deliveries: Iterable[SyncDelivery | str]) -> bool:
        return self._client._run(self._live.ack([_unwrap(d) for d in deliveries]))

    def nack(self, deliveries: Iterable[SyncDelivery | str], *, action: str = "retry") -> bool:
        return self._client._run(self._live.nack([_unwrap(d) for d in deliveries], action=action))


def _unwrap(item: SyncDelivery | str) -> Delivery | str:
    return item._delivery if isinstance(item, SyncDelivery) else item


def _blocking(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: EvstoreClient, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)
    return call


def _iterating(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: EvstoreClient, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._iterate_direct(name, *args, **kwargs)
    return call


def _sync_face(name: str, method: Callable[..., Any], face: type[_SyncIterator]) -> Callable[..., Any]:
    """The blocking counterpart of an async method that returns a subscription or consumer object."""
    @functools.wraps(method)
    def call(self: EvstoreClient, *args: Any, **kwargs: Any) -> Any:
        async def make() -> Any:
            return getattr(self._async, name)(*args, **kwargs)
        return face(self, self._run(make()))
    call.__doc__ = f"Blocking: returns a {face.__name__} (use `with`, iterate, `stop()` from any thread).\n\n" \
                   f"{method.__doc__}"
    return call


EvstoreClient.subscribe = _sync_face("subscribe", AsyncEvstoreClient.subscribe, SyncSubscription)  # type: ignore
EvstoreClient.consume = _sync_face("consume", AsyncEvstoreClient.consume, SyncConsumer)  # type: ignore


def _mirror_async_methods() -> None:
    for name, member in vars(AsyncEvstoreClient).items():
        if name.startswith("_") or name == "close" or hasattr(EvstoreClient, name):
            continue
        if inspect.isasyncgenfunction(member):
            setattr(EvstoreClient, name, _iterating(name, member))
        elif inspect.iscoroutinefunction(member):
            setattr(EvstoreClient, name, _blocking(name, member))


_mirror_async_methods()
