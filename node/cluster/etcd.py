"""The Coordinator on etcd, through the asyncio client aetcd.

aetcd talks to one host at a time, so `_Endpoints` keeps one client and moves to the next endpoint (with a
fresh gRPC channel, which also skips gRPC's reconnect backoff) on a transport error. Every aetcd/gRPC error
leaves this module as a CoordinatorError.

aetcd 1.0 opens only insecure channels and fetches an auth token once, never renewing it (after the token's
TTL, or an etcd restart, every call fails with `invalid auth token`). `_Client` adds what it lacks: a TLS
channel (`https://` endpoints, CA from EtcdAccess.ca_file) and authentication on first use and again
whenever etcd refuses the token.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc

from .auth import LeaderRecord, LeaderRecords
from .coordinator import CoordinatorError, IsrState, LeaderInfo, LeaseLost, LeaseStatus, MemberInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

# Answers from a reachable etcd that retrying elsewhere would not change.
_REQUEST_ERROR_CODES = frozenset({
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS,
})
# Pings let a watch notice a peer that vanished without closing the socket; etcd refuses pings < 5 s apart.
_CHANNEL_OPTIONS = {"grpc.keepalive_time_ms": 10_000, "grpc.keepalive_timeout_ms": 5_000}
# A watch through a member cut off from the raft leader is cancelled instead of silently stalling.
_REQUIRE_LEADER = (("hasleader", "true"),)


def _grpc_code(error: BaseException) -> grpc.StatusCode | None:
    while error is not None:
        if isinstance(error, grpc.aio.AioRpcError):
            return error.code()
        error = error.__cause__
    return None


def _is_request_error(error: BaseException) -> bool:
    return _grpc_code(error) in _REQUEST_ERROR_CODES or isinstance(error, aetcd.exceptions.RevisionCompactedError)


def _parse_endpoint(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"etcd endpoint {url!r}: only http:// and https:// endpoints are supported")
    return parts.scheme, parts.hostname or "127.0.0.1", parts.port or 2379


def _token_rejected(error: BaseException) -> bool:
    """etcd no longer accepts the auth token sent (expired, or etcd restarted): authenticate again."""
    if _grpc_code(error) != grpc.StatusCode.UNAUTHENTICATED:
        return False
    text = str(error)
    return "auth token" in text or "user name is empty" in text


@dataclass(frozen=True)
class EtcdAccess:
    """How to reach etcd when it enforces authentication and/or TLS (both optional)."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None  # PEM roots for https:// endpoints; None = the system's

    def __post_init__(self) -> None:
        if (self.username is None) != (self.password is None):
            raise ValueError("an etcd username needs a password, and a password a username")


class _Client(aetcd.Client):
    """aetcd's client over a TLS channel when asked, authenticating on first use and when the token is
    refused. Call `authenticate()` before an operation (it returns at once while a token is held)."""

    def __init__(self, host: str, port: int, *, timeout: float, options: dict, access: EtcdAccess,
                 credentials: grpc.ChannelCredentials | None) -> None:
        super().__init__(host=host, port=port, timeout=timeout, options=options)  # credentials: kept here
        self._access = access
        self._credentials = credentials
        self._auth_lock = asyncio.Lock()

    async def connect(self) -> None:
        """Build the channel and stubs; nothing is sent yet (the token comes with authenticate())."""
        if self._connected.is_set():
            return
        target, options = f"{self._host}:{self._port}", list(self._options.items())
        self.channel = (grpc.aio.secure_channel(target, self._credentials, options=options)
                        if self._credentials is not None else grpc.aio.insecure_channel(target, options=options))
        self.auth_stub = rpc.AuthStub(self.channel)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._connected.set()

    async def authenticate(self) -> None:
        if self._access.username is None or self.metadata is not None:
            return
        async with self._auth_lock:
            if self.metadata is None:
                await self.connect()
                reply = await self.auth_stub.Authenticate(
                    rpc.AuthenticateRequest(name=self._access.username, password=self._access.password),
                    timeout=self._timeout)
                self.metadata = (("token", reply.token),)

    def forget_token(self, token: tuple | None) -> None:
        if self.metadata is token:  # not one another task fetched meanwhile
            self.metadata = None


class _Endpoints:
    """The current aetcd client, rotation to the next endpoint on transport errors, and reachability."""

    def __init__(self, endpoints: tuple[str, ...], timeout: float,
                 on_up: Callable[[bool], None] | None, access: EtcdAccess = EtcdAccess(), metrics=None) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self._urls = tuple(endpoints)
        parsed = [_parse_endpoint(u) for u in self._urls]
        if len({scheme for scheme, _, _ in parsed}) > 1:
            raise ValueError("etcd endpoints must be all http:// or all https://")
        self._addresses = [(host, port) for _, host, port in parsed]
        self._access = access
        self._credentials = None
        if parsed[0][0] == "https":
            roots = Path(access.ca_file).read_bytes() if access.ca_file is not None else None
            self._credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        self._timeout = timeout
        self._on_up = on_up
        self._metrics = metrics
        self._index = 0
        self._client: aetcd.Client | None = None
        self._generation = 0
        self._users: dict[_Client, int] = {}
        self._closing: set[asyncio.Task] = set()
        self._up: bool | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return self._urls[self._index]

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[tuple[_Client, int]]:
        """The current client and its generation (to tell, on failure, whether someone already moved on).
        A replaced client is closed only once nobody uses it: closing a channel cancels the calls on it."""
        if self._closed:
            raise CoordinatorError("the etcd coordinator is closed")
        if self._client is None:
            host, port = self._addresses[self._index]
            self._client = _Client(host, port, timeout=self._timeout, options=_CHANNEL_OPTIONS, access=self._access,
                                   credentials=self._credentials)
            self._generation += 1
        client, generation = self._client, self._generation
        self._users[client] = self._users.get(client, 0) + 1
        try:
            await client.connect()  # only builds the channel: nothing is sent yet
            yield client, generation
        finally:
            self._users[client] -= 1
            if not self._users[client]:
                del self._users[client]
                if client is not self._client:
                    self._close_later(client)

    async def call(self, operation: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run `operation` on the current endpoint, moving on to the next one after a transport error, each
        endpoint once. Operations must tolerate being applied twice (a lost answer is not a lost request)."""
        last: BaseException | None = None
        attempts, token_renewed = len(self._addresses), False
        while attempts > 0:
            attempts -= 1
            async with self.borrow() as (client, generation):
                token = client.metadata
                started = time.perf_counter()
                try:
                    await client.authenticate()
                    token = client.metadata
                    result = await operation(client)
                except asyncio.CancelledError as e:
                    if _really_cancelled():
                        raise
                    last = e  # gRPC cancels the calls of a channel closed under them (by close())
                    continue
                except Exception as e:
                    if _token_rejected(e) and not token_renewed:
                        token_renewed = True  # once per call: a token refused at once again is a real refusal
                        attempts += 1
                        client.forget_token(token)
                        log.info("etcd %s refused the auth token: authenticating again", self.url)
                        continue
                    if _is_request_error(e):
                        self.set_up(True)
                        raise CoordinatorError(f"etcd {self.url}: {e}") from e
                    log.debug("etcd %s failed: %r", self.url, e)
                    last = e
                    self.failed(generation)
                    continue
                finally:
                    if self._metrics is not None:
                        self._metrics.etcd_request_latency.observe(time.perf_counter() - started)
            self.set_up(True)
            return result
        self.set_up(False)
        raise CoordinatorError(f"no etcd endpoint of {', '.join(self._urls)} answered: {last!r}") from last

    def failed(self, generation: int) -> None:
        """Move on to the next endpoint with a new channel (which also skips gRPC's reconnect backoff)."""
        if generation != self._generation or self._client is None:
            return  # another task already moved on
        old, self._client = self._client, None
        self._index = (self._index + 1) % len(self._addresses)
        if old not in self._users:
            self._close_later(old)

    def _close_later(self, client: aetcd.Client) -> None:
        task = asyncio.get_running_loop().create_task(_close_quietly(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def set_up(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        log.log(logging.INFO if up else logging.WARNING, "etcd %s", "reachable" if up else "unreachable")
        if self._on_up is not None:
            try:
                self._on_up(up)
            except Exception:
                log.exception("on_etcd_up callback failed")

    async def close(self) -> None:
        self._closed = True
        clients = set(self._users)
        if self._client is not None:
            clients.add(self._client)
        self._client = None
        for client in clients:
            await _close_quietly(client)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _really_cancelled() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def _close_quietly(client: aetcd.Client) -> None:
    try:
        async with asyncio.timeout(5):
            await client.close()
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.debug("closing etcd client: %r", e)


class _Compacted(Exception):
    """The watch start revision was compacted away: re-read the key instead."""


class EtcdCoordinator:
    """Coordinator (see coordinator.py) on etcd. start() tolerates an unreachable etcd: the lease stays
    `lost` and the keepalive task keeps trying to register until etcd answers."""

    def __init__(self, endpoints: tuple[str, ...], store_id: str, lease_ttl: float = 5.0,
                 on_etcd_up: Callable[[bool], None] | None = None,
                 request_timeout: float | None = None, *, leader_records: LeaderRecords,
                 on_rejected_leader: Callable[[str], None] | None = None,
                 access: EtcdAccess = EtcdAccess(), metrics=None) -> None:
        self.lease = LeaseStatus(ttl=lease_ttl)
        self._records = leader_records
        self._on_rejected_leader = on_rejected_leader
        self._rejected_revision = 0  # the mod revision of the last rejected record reported (once each)
        self._grant_ttl = max(1, math.ceil(lease_ttl))  # etcd grants whole seconds
        self._timeout = request_timeout or max(1.0, lease_ttl / 2)
        self._conn = _Endpoints(tuple(endpoints), self._timeout, on_etcd_up, access, metrics)
        self._metrics = metrics
        self._prefix = f"/evstore/{store_id}/"
        self._me: MemberInfo | None = None
        self._lease_id: int | None = None
        self._stale_leases: list[int] = []  # given up on but maybe still alive in etcd: revoke when reachable
        self._registered = asyncio.Event()
        self._closed = asyncio.Event()
        self._keepalive_task: asyncio.Task | None = None

    @property
    def endpoint(self) -> str:
        """The etcd endpoint currently in use."""
        return self._conn.url

    def _key(self, name: str) -> bytes:
        return (self._prefix + name).encode()

    # --- lease and membership

    async def start(self, me: MemberInfo) -> None:
        self._me = me
        try:
            await self._register()
        except CoordinatorError as e:
            self.lease.lost = True
            log.warning("registering %s in etcd failed (will retry): %s", me.node, e)
        self._keepalive_task = asyncio.create_task(self._keep_alive(), name=f"etcd-keepalive-{me.node}")

    async def wait_registered(self) -> None:
        """Return once this node holds a live lease with its member key (bound it with asyncio.timeout)."""
        await self._registered.wait()

    async def close(self) -> None:
        self._closed.set()
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive_task
        if self._lease_id is not None:
            self._stale_leases.append(self._lease_id)
            self._lease_id = None
        self.lease.lost = True
        self._registered.clear()
        await self._revoke_stale_leases()
        await self._conn.close()

    async def _register(self) -> None:
        assert self._me is not None
        await self._revoke_stale_leases()
        sent = time.monotonic()
        granted = await self._conn.call(lambda c: c.lease(self._grant_ttl))
        member = json.dumps({"node": self._me.node, "url": self._me.url}).encode()
        try:
            await self._conn.call(lambda c: c.put(self._key(f"members/{self._me.node}"), member, lease=granted.id))
        except BaseException:  # also when cancelled by close(): revoke it later rather than leave it to expire
            self._stale_leases.append(granted.id)
            raise
        self._lease_id = granted.id
        self.lease.generation += 1
        self.lease.last_refresh = sent
        self.lease.lost = False
        self._registered.set()
        log.info("registered %s in etcd under lease %x", self._me.node, granted.id)

    async def _revoke_stale_leases(self) -> None:
        while self._stale_leases:
            lease_id = self._stale_leases[0]
            try:
                await self._conn.call(lambda c: c.revoke_lease(lease_id))
            except CoordinatorError as e:
                if _grpc_code(e) != grpc.StatusCode.NOT_FOUND:  # not found: already expired, fine
                    log.debug("revoking lease %x: %s", lease_id, e)
                    return
            self._stale_leases.pop(0)

    def _mark_lost(self, reason: str) -> None:
        if not self.lease.lost:
            log.warning("etcd lease lost: %s", reason)
        self.lease.lost = True
        self._registered.clear()

    async def _keep_alive(self) -> None:
        interval = self.lease.ttl / 3
        while not self._closed.is_set():
            try:
                if self.lease.lost or self._lease_id is None:
                    # Never resume an old lease once declared lost: the node may have acted on the loss (stepped
                    # down) while still owning keys under it. Revoke it and start over with a fresh one.
                    if self._lease_id is not None:
                        self._stale_leases.append(self._lease_id)
                        self._lease_id = None
                    await self._register()
                elif not await self._refresh():
                    self._renewal_failed()
                    self._mark_lost("expired in etcd")
                    continue  # re-register now, not after another interval
            except CoordinatorError as e:
                log.debug("etcd keepalive: %s", e)
                self._renewal_failed()
                if time.monotonic() - self.lease.last_refresh >= self.lease.ttl:
                    self._mark_lost(f"no keepalive answered for {self.lease.ttl}s")
            except Exception:
                log.exception("etcd keepalive failed unexpectedly")
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(interval):
                    await self._closed.wait()

    def _renewal_failed(self) -> None:
        if self._metrics is not None:
            self._metrics.etcd_lease_renewal_failures.inc()

    async def _refresh(self) -> bool:
        """One keepalive; False when etcd says the lease no longer exists."""
        lease_id = self._lease_id
        sent = time.monotonic()
        reply = await self._conn.call(lambda c: c.refresh_lease(lease_id))
        if reply is None or reply.TTL <= 0:
            return False
        if lease_id == self._lease_id:
            self.lease.last_refresh = sent
        return True

    def _require_lease(self) -> int:
        if self.lease.lost or self._lease_id is None:
            raise LeaseLost("this node holds no etcd lease")
        return self._lease_id

    async def members(self) -> list[MemberInfo]:
        found = await self._conn.call(lambda c: c.get_prefix(self._key("members/")))
        members = []
        for kv in found:
            data = json.loads(kv.value)
            members.append(MemberInfo(node=data["node"], url=data["url"]))
        return sorted(members, key=lambda m: m.node)

    # --- leadership

    def _record_of(self, kv) -> LeaderRecord:
        record = self._records.read(kv.value, create_revision=kv.create_revision, lease=kv.lease)
        if record.kind == "forged" and kv.mod_revision != self._rejected_revision:
            self._rejected_revision = kv.mod_revision
            # node and url are whatever the writer put there: shown shortened, for finding the writer
            log.warning("ignoring the leader record at revision %d: %s (it names node %r, url %r)",
                        kv.mod_revision, record.reason, record.node[:64], record.url[:128])
            if self._on_rejected_leader is not None:
                self._on_rejected_leader(record.reason)
        return record

    def _leader_from(self, kv) -> LeaderInfo | None:
        """The leader a record names; None for a claim (an election being decided) and for a forged record."""
        record = self._record_of(kv)
        if record.kind not in ("sealed", "legacy"):
            return None
        return LeaderInfo(node=record.node, url=record.url, epoch=kv.create_revision,
                          legacy=record.kind == "legacy")

    async def leader(self) -> LeaderInfo | None:
        leader, _ = await self._leader_at_revision()
        return leader

    async def _leader_at_revision(self) -> tuple[LeaderInfo | None, int]:
        key = self._key("leader")
        found = await self._conn.call(lambda c: c.get_range(key, key + b"\0"))  # a range answers with a header
        leader = self._leader_from(found[0]) if len(found) else None
        return leader, found.header.revision

    async def campaign(self, me: MemberInfo) -> LeaderInfo | None:
        """Claim the key if absent, then seal the claim with the epoch it got (see auth.LeaderRecords). A
        forged record in the way, or an old claim of this node's that no campaign will seal, is removed
        first (only that version of the key), so that neither can block elections for good."""
        lease_id = self._require_lease()
        key = self._key("leader")
        claim = self._records.claim(me.node, me.url, lease_id)

        def txn(c: aetcd.Client):
            t = c.transactions
            return c.transaction(compare=[t.version(key) == 0],
                                 success=[t.put(key, claim, lease=lease_id), t.get(key)],
                                 failure=[t.get(key)])
        for _attempt in range(2):
            try:
                won, responses = await self._conn.call(txn)
            except CoordinatorError as e:
                if _grpc_code(e) == grpc.StatusCode.NOT_FOUND:
                    raise LeaseLost(f"lease {lease_id:x} is gone") from e
                raise
            held = responses[-1]  # [(value, Get)] or [] from the get
            if not held:
                return None  # deleted right after our transaction: the next round decides
            kv = held[0][1]
            # not won, yet our own fresh claim, untouched since it was created: an earlier answer was lost
            if won or (kv.value == claim and kv.mod_revision == kv.create_revision):
                break
            record = self._record_of(kv)
            if record.kind == "sealed" and record.node == me.node and kv.lease == lease_id:
                return LeaderInfo(node=me.node, url=record.url, epoch=kv.create_revision)  # ours already
            stale_own_claim = record.kind == "claimed" and record.node == me.node
            if not (record.kind == "forged" or stale_own_claim) or not await self._remove(kv, record.kind):
                return None
        else:
            return None
        if self.lease.lost or self._lease_id != lease_id:
            raise LeaseLost("the lease was replaced during the campaign: the key goes with the old one")
        return await self._seal(me, kv, lease_id)

    async def _seal(self, me: MemberInfo, kv, lease_id: int) -> LeaderInfo | None:
        key, epoch = self._key("leader"), kv.create_revision
        sealed = self._records.seal(me.node, me.url, lease_id, epoch)

        def txn(c: aetcd.Client):
            t = c.transactions
            return c.transaction(compare=[t.create(key) == epoch, t.mod(key) == kv.mod_revision],
                                 success=[t.put(key, sealed, lease=lease_id)], failure=[t.get(key)])
        try:
            done, responses = await self._conn.call(txn)
        except CoordinatorError as e:
            if _grpc_code(e) == grpc.StatusCode.NOT_FOUND:
                raise LeaseLost(f"lease {lease_id:x} is gone") from e
            raise
        held = responses[-1] if not done else []
        if not done and held and held[0][1].value == sealed and held[0][1].create_revision == epoch:
            done = True  # sealed by this very call: an earlier answer was lost
        if not done:
            log.warning("the leader claim of epoch %d changed before it was sealed: not leading", epoch)
            return None
        return LeaderInfo(node=me.node, url=me.url, epoch=epoch)

    async def _remove(self, kv, kind: str) -> bool:
        key = self._key("leader")

        def txn(c: aetcd.Client):
            t = c.transactions
            return c.transaction(compare=[t.mod(key) == kv.mod_revision], success=[t.delete(key)], failure=[])
        deleted, _ = await self._conn.call(txn)
        if deleted:
            log.warning("removed the %s leader record of revision %d", kind, kv.mod_revision)
        return deleted

    async def resign(self, epoch: int) -> bool:
        key = self._key("leader")

        def txn(c: aetcd.Client):
            t = c.transactions
            return c.transaction(compare=[t.create(key) == epoch], success=[t.delete(key)], failure=[])
        deleted, _ = await self._conn.call(txn)
        return deleted

    async def watch_leader(self) -> AsyncIterator[LeaderInfo | None]:
        retry_interval = min(0.5, self.lease.ttl / 4)
        last: object = ()  # nothing yielded yet
        revision: int | None = None  # the revision the last known state is current at

        def changed(leader: LeaderInfo | None) -> bool:
            nonlocal last
            state = None if leader is None else (leader.node, leader.epoch)
            if state == last:
                return False
            last = state
            return True

        while not self._closed.is_set():
            try:
                if revision is None:
                    leader, revision = await self._leader_at_revision()
                    if changed(leader):
                        yield leader
                async with contextlib.aclosing(self._leader_events(revision + 1)) as events:
                    async for leader, revision in events:
                        if changed(leader):
                            yield leader
            except _Compacted:
                revision = None
                continue
            except CoordinatorError as e:
                log.debug("leader watch: %s", e)
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(retry_interval):
                    await self._closed.wait()

    async def _leader_events(self, start_revision: int) -> AsyncIterator[tuple[LeaderInfo | None, int]]:
        """(leader or None, mod revision) for every change of the leader key from start_revision on."""
        create = rpc.WatchCreateRequest(key=self._key("leader"), start_revision=start_revision)
        done = asyncio.Event()

        async def requests():
            yield rpc.WatchRequest(create_request=create)
            await done.wait()  # keep the request side open: closing it ends the watch

        async with self._conn.borrow() as (client, generation):
            try:
                await client.authenticate()
            except grpc.aio.AioRpcError as e:
                if e.code() not in _REQUEST_ERROR_CODES:
                    self._conn.failed(generation)
                raise CoordinatorError(f"etcd authentication on {self._conn.url}: {e.details()}") from e
            token = client.metadata
            call = rpc.WatchStub(client.channel).Watch(requests(), metadata=_REQUIRE_LEADER + (token or ()))
            try:
                async for response in call:
                    self._conn.set_up(True)
                    if response.compact_revision:
                        raise _Compacted()
                    if response.canceled:
                        raise CoordinatorError(f"etcd cancelled the watch: {response.cancel_reason}")
                    for event in response.events:
                        if event.type == rpc.Event.DELETE:
                            yield None, event.kv.mod_revision
                        else:
                            yield self._leader_from(event.kv), event.kv.mod_revision
            except grpc.aio.AioRpcError as e:
                if _token_rejected(e):
                    client.forget_token(token)
                elif e.code() not in _REQUEST_ERROR_CODES:
                    self._conn.failed(generation)
                raise CoordinatorError(f"etcd watch on {self._conn.url}: {e.details()}") from e
            except grpc.aio.BaseError as e:
                raise CoordinatorError(f"etcd watch: {e!r}") from e
            except asyncio.CancelledError as e:
                if _really_cancelled():
                    raise
                raise CoordinatorError("etcd watch: the channel was closed") from e
            finally:
                done.set()
                call.cancel()

    # --- in-sync replicas

    @staticmethod
    def _isr_from(kv) -> IsrState:
        data = json.loads(kv.value)
        return IsrState(epoch=data["epoch"], members=tuple(data["members"]), revision=kv.mod_revision)

    async def isr(self) -> IsrState:
        found = await self._conn.call(lambda c: c.get(self._key("isr")))
        return IsrState(epoch=0) if found is None else self._isr_from(found)

    async def set_isr(self, epoch: int, members: tuple[str, ...], expected_revision: int) -> IsrState | None:
        leader_key, isr_key = self._key("leader"), self._key("isr")
        value = json.dumps({"epoch": epoch, "members": list(members)}).encode()

        def txn(c: aetcd.Client):
            t = c.transactions
            return c.transaction(compare=[t.create(leader_key) == epoch, t.mod(isr_key) == expected_revision],
                                 success=[t.put(isr_key, value), t.get(isr_key)], failure=[])
        written, responses = await self._conn.call(txn)
        if not written:
            return None
        return self._isr_from(responses[-1][0][1])
