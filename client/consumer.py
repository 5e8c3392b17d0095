"""Consuming a persistent subscription over its WebSocket (`GET /v1/subscriptions/{name}/connect`).

`AsyncEvstoreClient.consume(name)` returns a `Consumer`: an async iterator of `Delivery` objects
(`delivery_id`, `attempt`, `event`, and `ack()` / `nack(action)`), and an async context manager. The
server sends `{"events": [{"deliveryId", "attempt", "event"}]}`; acks go back on the same socket as
`{"ack": [ids]}`, nacks as `{"nack": [ids], "action": "retry"|"park"|"skip"}`. `Consumer.ack(...)` and
`Consumer.nack(...)` take several deliveries at once (one message).

Delivery is at least once, and runs on the leader: a follower answers the connection with
`{"error": "not_leader", "leader": {"node", "url"}}` and closes it, and the consumer connects to that
URL (back to the client's own URL, or the next of `nodes`, when the leader cannot be reached, so it
follows a failover). When the socket drops, the consumer connects again with the bounded backoff of
evstore.client.reconnect, and deliveries of the old socket that were not yet yielded are dropped: the
server delivers every un-acked event again. Acking a delivery whose socket has gone returns False
(nothing sent; the event comes again). A 4xx on connecting (404 subscription_not_found after a delete,
409 too_many_consumers, 401/403) ends the iteration with that error.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Iterable, Union

import aiohttp
import orjson

from . import protocol
from .errors import ConnectionFailed, EvstoreError, error_from_reply
from .protocol import loads
from .reconnect import NodeRing, Reconnecting

if TYPE_CHECKING:
    from .async_client import AsyncEvstoreClient

# A WebSocket handshake refusal carries no readable body in aiohttp: the code comes from the status.
HANDSHAKE_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "subscription_not_found",
                   409: "too_many_consumers", 503: "unavailable"}
PING_INTERVAL = 20.0


class Delivery:
    """One delivered event of a persistent subscription."""

    __slots__ = ("delivery_id", "attempt", "event", "_consumer", "_socket")

    def __init__(self, delivery_id: str, attempt: int, event: dict, consumer: "Consumer", socket: Any) -> None:
        self.delivery_id = delivery_id
        self.attempt = attempt
        self.event = event
        self._consumer = consumer
        self._socket = socket

    async def ack(self) -> bool:
        """Done with it. False when its connection is gone (the server will deliver it again)."""
        return await self._consumer.ack([self])

    async def nack(self, action: str = "retry") -> bool:
        """`retry` (deliver again), `park` (move to the parked list) or `skip` (count as handled)."""
        return await self._consumer.nack([self], action=action)

    def __repr__(self) -> str:
        return (f"Delivery(delivery_id={self.delivery_id!r}, attempt={self.attempt!r}, "
                f"position={self.event.get('position')!r})")


DeliveryRef = Union[Delivery, str]


class Consumer:
    """An async iterator of `Delivery` over one persistent subscription; see the module doc."""

    def __init__(self, client: "AsyncEvstoreClient", name: str, *, reconnect_timeout: float | None,
                 max_backoff: float, nodes: Iterable[str] = ()) -> None:
        self._client = client
        self._nodes = NodeRing(client.url, nodes)
        self.name = name
        self._policy = Reconnecting(reconnect_timeout=reconnect_timeout, max_backoff=max_backoff)
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._ready: deque[Delivery] = deque()
        self._leader_url: str | None = None  # set when a follower sent us to the leader
        self._closing: asyncio.Future | None = None

    @property
    def stopped(self) -> bool:
        return self._policy.stopped

    @property
    def reconnects(self) -> int:
        return self._policy.reconnects

    def stop(self) -> None:
        """End the iteration and close the socket (un-acked deliveries are redelivered by the server)."""
        self._policy.mark_stopped()
        self._ready.clear()
        socket, self._socket = self._socket, None
        if socket is not None and not socket.closed:
            self._closing = asyncio.ensure_future(socket.close())

    async def aclose(self) -> None:
        """`stop()`, and wait until the socket is closed."""
        self.stop()
        if self._closing is not None:
            await self._closing

    async def connect(self) -> "Consumer":
        if self._socket is None and not self.stopped:
            await self._connect()
        return self

    async def __aenter__(self) -> "Consumer":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> "Consumer":
        return self

    async def __anext__(self) -> Delivery:
        while not self._ready:
            if self.stopped:
                raise StopAsyncIteration
            await self._receive()
        return self._ready.popleft()

    # -- acknowledgements ------------------------------------------------------------------

    async def ack(self, deliveries: Iterable[DeliveryRef]) -> bool:
        """Ack several deliveries in one message (ids as strings count as from the current socket)."""
        return await self._send(deliveries, {})

    async def nack(self, deliveries: Iterable[DeliveryRef], *, action: str = "retry") -> bool:
        if action not in protocol.NACK_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(protocol.NACK_ACTIONS)}")
        return await self._send(deliveries, {"action": action})

    async def _send(self, deliveries: Iterable[DeliveryRef], extra: dict) -> bool:
        key = "nack" if extra else "ack"
        socket = self._socket
        ids: list[str] = []
        sent_all = True
        for item in deliveries:
            if isinstance(item, Delivery):
                if item._socket is not socket:
                    sent_all = False
                    continue
                ids.append(item.delivery_id)
            else:
                ids.append(str(item))
        if not ids:
            return sent_all and socket is not None
        if socket is None or socket.closed:
            return False
        try:
            await socket.send_str(orjson.dumps({key: ids, **extra}).decode())
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            return False
        return sent_all

    # -- the connection --------------------------------------------------------------------

    async def _connect(self) -> None:
        client = self._client
        path = protocol.subscription_path(self.name, "/connect")
        while not self.stopped:
            base = self._leader_url or self._nodes.current
            try:
                socket = await client._http().ws_connect(
                    client._url(path, base=base), heartbeat=PING_INTERVAL,
                    timeout=aiohttp.ClientWSTimeout(ws_close=client.timeout), max_msg_size=0)
            except aiohttp.WSServerHandshakeError as exc:
                error = _handshake_error(exc)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                error = ConnectionFailed(base, f"cannot connect to {base}: {exc}")
                if self._leader_url is not None:
                    self._leader_url = None  # the leader we were sent to is gone: ask our nodes again
                elif not self._nodes.next() and not self._policy.connected_once:
                    raise error from exc  # the first connection: every node was tried once
                if not self._policy.connected_once:
                    continue
            else:
                self._nodes.reached()
                self._socket = socket
                self._policy.connected()
                if self.stopped:
                    await socket.close()
                    self._socket = None
                return
            await self._policy.after_failure(error, initial_retries=client.retries)

    async def _receive(self) -> None:
        if self._socket is None:
            await self._connect()
            if self._socket is None:
                return
        socket = self._socket
        try:
            message = await socket.receive()
        except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError):
            message = None
        if self.stopped:
            return
        if message is not None and message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            self._take(message.data, socket)
            return
        # closed, closing or an error frame: drop what this socket delivered and connect again
        if self._socket is socket:
            self._socket = None
            self._ready.clear()
        if not socket.closed:
            await socket.close()
        await self._policy.dropped()

    def _take(self, data: str | bytes, socket: Any) -> None:
        try:
            body = loads(data)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        if body.get("error") == "not_leader":
            # a follower names the leader and closes: the next connection goes there
            leader = body.get("leader")
            url = leader.get("url") if isinstance(leader, dict) else None
            self._leader_url = url.rstrip("/") if isinstance(url, str) and url else None
            return
        entries = body.get("events") or []
        if entries:
            self._policy.healthy()
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("event"), dict) and "deliveryId" in entry:
                self._ready.append(Delivery(str(entry["deliveryId"]), entry.get("attempt", 1), entry["event"],
                                            self, socket))


def _handshake_error(exc: aiohttp.WSServerHandshakeError) -> EvstoreError:
    code = HANDSHAKE_CODES.get(exc.status)
    message = f"{exc.message or 'refused'} (HTTP {exc.status} on connecting)"
    retry_after = (exc.headers or {}).get("Retry-After") if exc.headers else None
    body: dict[str, Any] | None = {"error": code, "message": message} if code else None
    if body is not None and retry_after and retry_after.replace(".", "", 1).isdigit():
        body["retryAfter"] = float(retry_after)
    return error_from_reply(exc.status, body, message)
