"""Async evstore client on aiohttp: one method per endpoint of shared/API.md.

Replies are returned as the server's JSON (dicts, keys exactly as in the contract); 204 replies
return None. Non-2xx replies raise the typed errors of `evstore.client.errors`.
"""
from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any, AsyncIterator, Iterable, Mapping

import aiohttp
from yarl import URL

from . import protocol
from .consumer import Consumer
from .errors import ConnectionFailed, Unavailable, error_from_payload
from .protocol import AppendInput, EventInput, ExpectedVersion, SubscriptionSettings
from .subscription import Subscription

DEFAULT_URL = "http://127.0.0.1:7113"


def connection_settings(url: str | None, token: str | None) -> tuple[str, str | None]:
    """The node's URL and token: as given, else from EVSTORE_URL and EVSTORE_TOKEN (as the CLI and the
    eventsourcing module read them), else DEFAULT_URL and no token. EVSTORE_TOKEN goes only with a URL that is not
    given: a client made for another node does not send it the environment's token."""
    if url:
        return url, token
    return (os.environ.get("EVSTORE_URL") or DEFAULT_URL,
            token if token is not None else os.environ.get("EVSTORE_TOKEN") or None)


class AsyncEvstoreClient:
    """Talks to one evstore node (any node of a cluster: followers forward writes).

    Only 503 `unavailable` is retried, at most `retries` more times, waiting the server's
    `retryAfter` (capped by `max_retry_delay`). Appends are safe to retry: event ids are fixed
    before the first attempt, and the server answers a repeated id set with the original reply.
    """

    def __init__(self, url: str | None = None, *, token: str | None = None, timeout: float = 30.0,
                 retries: int = 5, max_retry_delay: float = 5.0, max_connections: int = 100,
                 session: aiohttp.ClientSession | None = None, exact_numbers: bool = False) -> None:
        url, token = connection_settings(url, token)
        # replies parsed so that protocol.dumps writes each number back as the node sent it (decimals as RawJSON)
        self.exact_numbers = exact_numbers
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.max_retry_delay = max_retry_delay
        self.max_connections = max_connections
        self._session = session
        self._own_session = session is None
        self._live: weakref.WeakSet[Subscription | Consumer] = weakref.WeakSet()

    def decode(self, payload: bytes | str) -> Any:
        """A reply's JSON: exact (protocol.loads_exact) with `exact_numbers`, else plain Python numbers."""
        return protocol.loads_exact(payload) if self.exact_numbers else protocol.loads(payload)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> "AsyncEvstoreClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every subscription and consumer of this client, then close the HTTP session."""
        for live in list(self._live):
            live.stop()
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(limit=self.max_connections),
                json_serialize=lambda o: protocol.dumps(o).decode())
            self._own_session = True
        return self._session

    # -- transport -------------------------------------------------------------------------

    def _url(self, path: str, params: list[tuple[str, str]] | None = None, *, base: str | None = None) -> URL:
        url = URL((base or self.url) + path, encoded=True)
        return url.update_query(params) if params else url

    async def _request(self, method: str, path: str, *, params: list[tuple[str, str]] | None = None,
                       body: Any = None, timeout: float | None = None, raw: bool = False) -> Any:
        data = protocol.dumps(body) if body is not None else None
        attempt = 0
        while True:
            status, payload = await self._exchange(method, path, params=params, data=data,
                                                   timeout=timeout or self.timeout)
            if status < 300:
                if status == 204 or not payload:
                    return None
                return payload.decode() if raw else self.decode(payload)
            error = error_from_payload(status, payload)
            if not isinstance(error, Unavailable) or attempt >= self.retries:
                raise error
            await self._pause(self._retry_delay(error, attempt))
            attempt += 1

    async def _exchange(self, method: str, path: str, *, params: list[tuple[str, str]] | None,
                        data: bytes | None, timeout: float) -> tuple[int, bytes]:
        """One HTTP request: the reply's status and body. ConnectionFailed when no reply came."""
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._http().request(method, self._url(path, params), data=data, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status, await resp.read()
        except aiohttp.ClientConnectionError as exc:
            raise ConnectionFailed(self.url, f"cannot connect to {self.url}: {exc}") from exc
        except asyncio.TimeoutError as exc:
            raise ConnectionFailed(self.url, f"no reply from {self.url} within {timeout}s") from exc

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _retry_delay(self, error: Unavailable, attempt: int) -> float:
        hinted = error.retry_after
        delay = hinted if hinted is not None else 0.1 * (2 ** attempt)
        return max(0.0, min(delay, self.max_retry_delay))

    # -- streams ---------------------------------------------------------------------------

    async def append(self, stream: str, events: Iterable[EventInput], *,
                     expected_version: ExpectedVersion = "any") -> dict:
        """Append atomically. Returns {"stream", "fromVersion", "version", "position"}."""
        body = protocol.append_body(events, expected_version)
        return await self._request("POST", protocol.stream_path(stream), body=body)

    async def append_many(self, appends: Iterable[AppendInput]) -> dict:
        """Append to several streams atomically (all or nothing, contiguous positions): entries are
        `StreamAppend(stream, events, expected_version)` or mappings {"stream", "events", "expectedVersion"}.
        Returns {"results": [one append reply per entry], "position": last}. A failed expected version on any
        stream raises WrongExpectedVersion, whose `failures` names every failing stream."""
        return await self._request("POST", "/v1/streams", body=protocol.append_many_body(appends))

    async def read_stream(self, stream: str, *, from_version: int | None = None, limit: int | None = None,
                          backward: bool = False) -> dict:
        """One page: {"stream", "version", "events": [...], "next": V|None}."""
        params = protocol.read_stream_query(from_version, limit, backward)
        return await self._request("GET", protocol.stream_path(stream), params=params)

    async def iter_stream_pages(self, stream: str, *, from_version: int | None = None,
                                page_size: int | None = None, backward: bool = False) -> AsyncIterator[dict]:
        """Every page of a stream read, following `next` until it is null."""
        cursor = from_version
        while True:
            page = await self.read_stream(stream, from_version=cursor, limit=page_size, backward=backward)
            yield page
            following = page.get("next")
            if following is None or following == cursor:
                return
            cursor = following

    async def iter_stream(self, stream: str, *, from_version: int | None = None, page_size: int | None = None,
                          backward: bool = False) -> AsyncIterator[dict]:
        """Every event of a stream, page by page."""
        async for page in self.iter_stream_pages(stream, from_version=from_version, page_size=page_size,
                                                 backward=backward):
            for event in page.get("events", []):
                yield event

    async def stream_info(self, stream: str) -> dict:
        """{"stream", "version", "created", "updated", "deleted": "no"|"soft"|"hard", "metadata"}."""
        return await self._request("GET", protocol.stream_path(stream, "/info"))

    async def list_streams(self, *, prefix: str | None = None, after: str | None = None,
                           limit: int | None = None) -> dict:
        """One page: {"streams": [{"stream", "version", "updated"}], "next": NAME|None}."""
        params = protocol.query(prefix=prefix, after=after, limit=limit)
        return await self._request("GET", "/v1/streams", params=params)

    async def iter_streams(self, *, prefix: str | None = None, page_size: int | None = None) -> AsyncIterator[dict]:
        """Every stream in name order, following `next`."""
        after = None
        while True:
            page = await self.list_streams(prefix=prefix, after=after, limit=page_size)
            for entry in page.get("streams", []):
                yield entry
            following = page.get("next")
            if following is None or following == after:
                return
            after = following

    async def delete_stream(self, stream: str, *, expected_version: ExpectedVersion | None = None,
                            hard: bool = False) -> None:
        """Soft delete (404 until appended to again) or hard delete (410 forever)."""
        if expected_version is not None:
            protocol.check_expected_version(expected_version)
        params = protocol.query(expectedVersion=expected_version, hard=hard)
        await self._request("DELETE", protocol.stream_path(stream), params=params)

    async def get_stream_metadata(self, stream: str) -> dict:
        """{"maxCount", "maxAge", "truncateBefore", "custom"} (all optional)."""
        return await self._request("GET", protocol.stream_path(stream, "/metadata"))

    async def set_stream_metadata(self, stream: str, metadata: Mapping[str, Any]) -> dict | None:
        return await self._request("PUT", protocol.stream_path(stream, "/metadata"), body=dict(metadata))

    # -- $all ------------------------------------------------------------------------------

    async def read_all(self, *, from_position: int | None = None, limit: int | None = None,
                       backward: bool = False, types: Iterable[str] | None = None, type_prefix: str | None = None,
                       stream_prefix: str | None = None, stream_pattern: str | None = None,
                       include_system: bool = False) -> dict:
        """One page of $all: {"events": [...], "next": P|None, "head": last position}; `$`-streams only with
        `include_system`."""
        params = protocol.read_all_query(from_position, limit, backward, types, type_prefix, stream_prefix,
                                         stream_pattern, include_system)
        return await self._request("GET", "/v1/all", params=params)

    async def iter_all_pages(self, *, from_position: int | None = None, page_size: int | None = None,
                             backward: bool = False, types: Iterable[str] | None = None,
                             type_prefix: str | None = None, stream_prefix: str | None = None,
                             stream_pattern: str | None = None, include_system: bool = False) -> AsyncIterator[dict]:
        """Every page of an $all read, following `next` (which skips scanned non-matches) until null."""
        types = list(types) if types else None
        cursor = from_position
        while True:
            page = await self.read_all(from_position=cursor, limit=page_size, backward=backward, types=types,
                                       type_prefix=type_prefix, stream_prefix=stream_prefix,
                                       stream_pattern=stream_pattern, include_system=include_system)
            yield page
            following = page.get("next")
            if following is None or following == cursor:
                return
            cursor = following

    async def iter_all(self, *, from_position: int | None = None, page_size: int | None = None,
                       backward: bool = False, types: Iterable[str] | None = None, type_prefix: str | None = None,
                       stream_prefix: str | None = None, stream_pattern: str | None = None,
                       include_system: bool = False) -> AsyncIterator[dict]:
        """Every matching event of $all."""
        async for page in self.iter_all_pages(from_position=from_position, page_size=page_size, backward=backward,
                                              types=types, type_prefix=type_prefix, stream_prefix=stream_prefix,
                                              stream_pattern=stream_pattern, include_system=include_system):
            for event in page.get("events", []):
                yield event

    # -- transient subscriptions (Server-Sent Events) ---------------------------------------

    def subscribe(self, *, stream: str | None = None, types: Iterable[str] | str | None = None,
                  type_prefix: str | None = None, stream_prefix: str | None = None,
                  stream_pattern: str | None = None, payload: Mapping[str, Any] | None = None,
                  include_system: bool = False, from_version: int | None = None,
                  from_position: int | None = None, after: int | None = None, start: str | None = None,
                  include_control: bool = False, reconnect_timeout: float | None = None,
                  idle_timeout: float | None = 60.0, max_backoff: float | None = None,
                  nodes: Iterable[str] = ()) -> Subscription:
        """A live subscription over SSE: `async with client.subscribe(...) as sub: async for event in sub`.

        One selector (stream, types (OR), type_prefix, stream_prefix, stream_pattern, payload: a JSON
        object contained in data; none: every event) and one start: from_version (with stream),
        from_position (inclusive), after (exclusive, like eventsourcing's `gt` and kurrentdbclient's
        `commit_position`), start="start" (the whole log) or "end" (the default: what commits next).
        Yields events in log order; include_control=True yields the server's messages instead
        (`{"event"}`, `{"caughtUp", "position"}`, `{"heartbeat", "position"}`). Resumes after a drop
        from `sub.position` with Last-Event-ID; gives up when reconnecting fails for
        `reconnect_timeout` s (None: never) and reconnects when nothing, not even a heartbeat, arrives
        for `idle_timeout` s; `nodes`: other node URLs of the store to resume on when this one is
        unreachable or stopping. See evstore.client.subscription.
        """
        params = protocol.subscribe_query(stream=stream, types=types, type_prefix=type_prefix,
                                          stream_prefix=stream_prefix, stream_pattern=stream_pattern,
                                          payload=payload, include_system=include_system,
                                          from_version=from_version, from_position=from_position, after=after,
                                          start=start)
        subscription = Subscription(self, params, include_control=include_control,
                                    reconnect_timeout=reconnect_timeout, idle_timeout=idle_timeout,
                                    max_backoff=self.max_retry_delay if max_backoff is None else max_backoff,
                                    nodes=nodes)
        self._live.add(subscription)
        return subscription

    # -- snapshots -------------------------------------------------------------------------

    async def save_snapshot(self, source: str, *, version: int, type: str, data: Any = None,
                            metadata: Mapping[str, Any] | bytes | None = None, keep: int | None = None) -> dict:
        """Store a snapshot of `source` at `version` (one already at that version is replaced). `data` and
        `metadata` given as bytes go as base64 (`dataBase64`/`metadataBase64`) and come back so; `keep`: from now
        on keep only the latest `keep` snapshots of this source. Returns {"source", "version", "position"}."""
        body = protocol.snapshot_body(version=version, type=type, data=data, metadata=metadata, keep=keep)
        return await self._request("PUT", protocol.snapshot_path(source), body=body)

    async def read_snapshot(self, source: str, *, max_version: int | None = None) -> dict:
        """The snapshot with the highest version at or below `max_version` (None: the latest):
        {"source", "version", "type", "data" | "dataBase64", "metadata" | "metadataBase64", "created",
        "position"}; SnapshotNotFound when there is none."""
        return await self._request("GET", protocol.snapshot_path(source),
                                   params=protocol.query(maxVersion=max_version))

    async def read_snapshots(self, source: str, *, min_version: int | None = None, max_version: int | None = None,
                             backward: bool = False, limit: int | None = None) -> dict:
        """One page of every snapshot of `source` with a version from `min_version` to `max_version` (both
        inclusive), in version order (`backward`: highest first): {"source", "snapshots": [...], "next": V|None}.
        eventsourcing's select_events(gt, lte, desc, limit) is min_version=gt+1, max_version=lte,
        backward=desc."""
        params = protocol.query(minVersion=min_version, maxVersion=max_version,
                                direction="backward" if backward else None, limit=limit)
        return await self._request("GET", protocol.snapshot_path(source, "/all"), params=params)

    async def iter_snapshots(self, source: str, *, min_version: int | None = None, max_version: int | None = None,
                             backward: bool = False, page_size: int | None = None) -> AsyncIterator[dict]:
        """Every snapshot of `source` in the range, page by page (following `next`)."""
        while True:
            page = await self.read_snapshots(source, min_version=min_version, max_version=max_version,
                                             backward=backward, limit=page_size)
            for snapshot in page.get("snapshots", []):
                yield snapshot
            following = page.get("next")
            if following is None:
                return
            if backward:
                max_version = following
            else:
                min_version = following

    async def delete_snapshot(self, source: str) -> None:
        """Delete every snapshot of `source` (204 also when it had none)."""
        await self._request("DELETE", protocol.snapshot_path(source))

    async def list_snapshots(self, *, prefix: str | None = None, after: str | None = None,
                             limit: int | None = None) -> dict:
        """One page of sources with snapshots, in name order, each with its latest snapshot (without payload):
        {"snapshots": [{"source", "version", "type", "created", "position"}], "next": SOURCE|None}."""
        return await self._request("GET", "/v1/snapshots", params=protocol.query(prefix=prefix, after=after,
                                                                                  limit=limit))

    # -- persistent subscriptions ----------------------------------------------------------

    async def create_subscription(self, name: str, *, stream: str | None = None,
                                  filter: Mapping[str, Any] | None = None, start_from: str | int | None = None,
                                  buffer_size: int | None = None, ack_timeout: float | None = None,
                                  max_retries: int | None = None, concurrency_limit: int | None = None,
                                  partition_by: str | None = None,
                                  extra: Mapping[str, Any] | None = None) -> dict | None:
        """Create (201) or confirm an identical one (200); other settings -> SubscriptionExists.

        Exactly one of `stream` or `filter` (the keys of /v1/all: type, typePrefix, streamPrefix,
        streamPattern; `protocol.all_filter` builds it; {} is every event). `extra`: settings this
        client does not name, sent as given."""
        settings = SubscriptionSettings(stream=stream, filter=filter, start_from=start_from,
                                        buffer_size=buffer_size, ack_timeout=ack_timeout, max_retries=max_retries,
                                        concurrency_limit=concurrency_limit, partition_by=partition_by,
                                        extra=dict(extra or {}))
        return await self._request("PUT", protocol.subscription_path(name), body=settings.body())

    async def update_subscription(self, name: str, *, buffer_size: int | None = None,
                                  ack_timeout: float | None = None, max_retries: int | None = None,
                                  concurrency_limit: int | None = None, partition_by: str | None = None,
                                  extra: Mapping[str, Any] | None = None) -> dict | None:
        """Change delivery settings (only those given; the checkpoint is kept): PATCH."""
        body = {**protocol.delivery_settings(buffer_size=buffer_size, ack_timeout=ack_timeout,
                                             max_retries=max_retries, concurrency_limit=concurrency_limit,
                                             partition_by=partition_by), **dict(extra or {})}
        if not body:
            raise ValueError("update_subscription needs at least one setting to change")
        return await self._request("PATCH", protocol.subscription_path(name), body=body)

    async def get_subscription(self, name: str) -> dict:
        """Settings and stats: checkpoint, head, lag, inFlight, parked, consumers."""
        return await self._request("GET", protocol.subscription_path(name))

    async def list_subscriptions(self) -> dict:
        """Every persistent subscription with its settings and stats."""
        return await self._request("GET", "/v1/subscriptions")

    async def delete_subscription(self, name: str) -> None:
        """204; its connected consumers are closed."""
        await self._request("DELETE", protocol.subscription_path(name))

    def consume(self, name: str, *, reconnect_timeout: float | None = None, max_backoff: float | None = None,
                nodes: Iterable[str] = ()) -> Consumer:
        """Deliveries of persistent subscription `name` over its WebSocket:
        `async with client.consume(name) as consumer: async for delivery in consumer: ...; await delivery.ack()`.

        Reconnects after a drop (un-acked events come again); gives up when reconnecting fails for
        `reconnect_timeout` s (None: never); `nodes`: other node URLs of the store to try when this one
        is unreachable (a follower sends the consumer to the leader by itself). See evstore.client.consumer."""
        consumer = Consumer(self, name, reconnect_timeout=reconnect_timeout,
                            max_backoff=self.max_retry_delay if max_backoff is None else max_backoff, nodes=nodes)
        self._live.add(consumer)
        return consumer

    async def fetch(self, name: str, *, max: int | None = None, wait: float | None = None) -> dict:
        """Consume by HTTP: up to `max` deliveries, waiting up to `wait` s:
        {"events": [{"deliveryId", "attempt", "event"}]}; settle them with ack / nack."""
        timeout = self.timeout + (wait or 0)
        return await self._request("POST", protocol.subscription_path(name, "/fetch"),
                                   params=protocol.query(max=max, wait=wait), timeout=timeout)

    async def ack(self, name: str, ids: Iterable[str]) -> dict | None:
        """Ack deliveries (their deliveryId) fetched by HTTP."""
        return await self._request("POST", protocol.subscription_path(name, "/ack"), body={"ids": list(ids)})

    async def nack(self, name: str, ids: Iterable[str], *, action: str = "retry") -> dict | None:
        """retry (deliver again), park (to the parked list) or skip (count as handled)."""
        if action not in protocol.NACK_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(protocol.NACK_ACTIONS)}")
        return await self._request("POST", protocol.subscription_path(name, "/nack"),
                                   body={"ids": list(ids), "action": action})

    async def parked(self, name: str) -> dict:
        """The parked events of subscription `name`."""
        return await self._request("GET", protocol.subscription_path(name, "/parked"))

    async def replay_parked(self, name: str) -> dict | None:
        """Deliver the parked events again (the checkpoint does not move)."""
        return await self._request("POST", protocol.subscription_path(name, "/parked/replay"))

    # -- cluster and operations ------------------------------------------------------------

    async def health_live(self) -> dict | None:
        return await self._request("GET", "/health/live")

    async def health_ready(self) -> dict:
        """{"ready": bool, ...server body}. A not-ready node (503) is an answer here, not an error."""
        status, payload = await self._exchange("GET", "/health/ready", params=None, data=None,
                                               timeout=self.timeout)
        if status not in (200, 503):
            raise error_from_payload(status, payload)
        body = protocol.decode_reply(payload)
        return {**(body if isinstance(body, dict) else {}), "ready": status == 200}

    async def metrics(self) -> str:
        """The Prometheus text exposition."""
        return await self._request("GET", "/metrics", raw=True) or ""

    async def info(self) -> dict:
        """Version, store id, node id, mode, features."""
        return await self._request("GET", "/v1/info")

    async def cluster(self) -> dict:
        """Members, leader, epoch, ISR, positions, lag."""
        return await self._request("GET", "/v1/cluster")

    async def step_down(self) -> dict | None:
        return await self._request("POST", "/v1/cluster/step-down")

    async def verify(self) -> dict:
        """Server-side checksum scan: {"checked": N, "corrupt": [positions]}."""
        return await self._request("POST", "/v1/admin/verify", timeout=max(self.timeout, 600.0))

    async def scavenge(self) -> dict | None:
        return await self._request("POST", "/v1/admin/scavenge", timeout=max(self.timeout, 600.0))
