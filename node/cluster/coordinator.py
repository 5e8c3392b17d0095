"""The small interface the cluster needs from a coordination service (etcd here; another could replace it).

Keys live under /evstore/<store>/: `members/<node>` (JSON MemberInfo, under this node's lease), `leader`
(JSON {"node", "url", ...} signed with the cluster secret (auth.LeaderRecords), under the leader's lease; its
create revision is the epoch) and `isr` (JSON IsrState,
no lease: it outlives every node so that only in-sync members may run for leader after a full restart).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

LEASE_MARGIN = 0.5  # seconds: a leader stops writing this long before its lease could have expired in etcd


class CoordinatorError(Exception):
    """The coordinator could not be reached or answered with an error; the caller retries or steps down."""


class LeaseLost(CoordinatorError):
    """This node's lease expired or was revoked: every key it held under the lease is gone."""


@dataclass(frozen=True)
class MemberInfo:
    node: str
    url: str


@dataclass(frozen=True)
class LeaderInfo:
    node: str
    url: str
    epoch: int  # the create revision of the leader key: strictly increasing across leaders
    legacy: bool = False  # an unsigned record of the previous version, honoured only with --peer-auth-compat


@dataclass(frozen=True)
class IsrState:
    epoch: int  # the epoch of the leader that wrote it (0 when no leader ever wrote one)
    members: tuple[str, ...] = ()
    revision: int = 0  # mod revision of the key, for compare-and-swap; 0 = the key does not exist


@dataclass
class LeaseStatus:
    """What the leader needs to fence itself: when the lease was last known valid, and its TTL."""
    ttl: float
    last_refresh: float = 0.0  # time.monotonic() when the last successful keepalive was *sent*
    lost: bool = False
    generation: int = 0  # counts the leases granted: a leader holds its key under one generation only

    def surely_alive(self) -> bool:
        """True while etcd cannot yet have expired the lease: a keepalive it answered was sent less than the
        TTL ago, with half a second to spare for clock steps between the two machines' timers."""
        return not self.lost and time.monotonic() < self.last_refresh + self.ttl - LEASE_MARGIN


class Coordinator(Protocol):
    lease: LeaseStatus

    async def start(self, me: MemberInfo) -> None:
        """Connect, grant the lease, register `members/<me.node>` under it, start the supervised keepalive
        (which re-grants a lease and re-registers after expiry, setting lease.lost while it had none)."""

    async def close(self) -> None:
        """Stop the keepalive, revoke the lease (so the keys vanish at once) and disconnect."""

    async def members(self) -> list[MemberInfo]: ...

    async def leader(self) -> LeaderInfo | None: ...

    async def campaign(self, me: MemberInfo) -> LeaderInfo | None:
        """Create the leader key under this node's lease only if absent (one transaction). The LeaderInfo
        with the new epoch when this node won, None when another node holds the key."""

    async def resign(self, epoch: int) -> bool:
        """Delete the leader key if it is still this node's key of `epoch`. True when deleted."""

    def watch_leader(self) -> AsyncIterator[LeaderInfo | None]:
        """Yield the current leader (or None) now and after every change. Re-creates the watch from the
        last seen revision + 1 after errors; never ends until close()."""

    async def isr(self) -> IsrState: ...

    async def set_isr(self, epoch: int, members: tuple[str, ...], expected_revision: int) -> IsrState | None:
        """Write the ISR in one transaction that succeeds only while the leader key's create revision is
        `epoch` (this node still leads) and the isr key's mod revision is `expected_revision` (0 = absent).
        The new state on success, None when either comparison failed."""


class InMemoryCoordinator:
    """A Coordinator on a dict shared by the coordinators of one process (one per simulated node), for fast
    tests of election and ISR logic; it keeps the same contract as EtcdCoordinator (the contract test runs
    against both). Its keepalive refreshes the lease every third of the TTL until `freeze()` (as a frozen node);
    leases do not run out with the clock: `expire()` ends one, as etcd would after its TTL."""

    class Store:
        """What etcd holds: keys with create/mod revisions, and which lease (owner) holds each."""

        def __init__(self) -> None:
            self.revision = 0
            self.keys: dict[str, tuple[bytes | object, int, int, object]] = {}  # value, create, mod, lease
            self.changed = asyncio.Condition()

        async def put(self, key: str, value, lease=None) -> int:
            self.revision += 1
            create = self.keys[key][1] if key in self.keys else self.revision
            self.keys[key] = (value, create, self.revision, lease)
            await self._notify()
            return self.revision

        async def delete(self, key: str) -> None:
            if self.keys.pop(key, None) is not None:
                self.revision += 1
                await self._notify()

        async def drop_lease(self, lease) -> None:
            for key in [k for k, v in self.keys.items() if v[3] is lease]:
                await self.delete(key)

        async def _notify(self) -> None:
            async with self.changed:
                self.changed.notify_all()

    def __init__(self, store: "InMemoryCoordinator.Store", lease_ttl: float = 5.0) -> None:
        self.store = store
        self.lease = LeaseStatus(ttl=lease_ttl)
        self._me: MemberInfo | None = None
        self._lease: object | None = None
        self._closed = False
        self._keepalive: asyncio.Task | None = None

    async def start(self, me: MemberInfo) -> None:
        self._me = me
        await self._register()
        self._keepalive = asyncio.create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.lease.ttl / 3)  # a keepalive's period, as EtcdCoordinator's
            self.refresh()

    def freeze(self) -> None:
        """Stop refreshing the lease (the node froze); `expire()` then does what etcd does after the TTL."""
        if self._keepalive is not None:
            self._keepalive.cancel()

    async def _register(self) -> None:
        self._lease = object()
        await self.store.put(f"members/{self._me.node}", self._me, self._lease)
        self.lease.generation += 1
        self.lease.last_refresh = time.monotonic()
        self.lease.lost = False

    def refresh(self) -> None:
        """A keepalive that etcd answered (tests call it instead of a keepalive task)."""
        if not self.lease.lost:
            self.lease.last_refresh = time.monotonic()

    async def expire(self) -> None:
        """The lease ran out (as after a freeze longer than its TTL): its keys go; a new one is granted."""
        self.lease.lost = True
        await self.store.drop_lease(self._lease)
        await self._register()

    async def close(self) -> None:
        self.freeze()
        self._closed = True
        self.lease.lost = True
        await self.store.drop_lease(self._lease)
        async with self.store.changed:
            self.store.changed.notify_all()

    async def members(self) -> list[MemberInfo]:
        return sorted((v[0] for k, v in self.store.keys.items() if k.startswith("members/")), key=lambda m: m.node)

    async def leader(self) -> LeaderInfo | None:
        held = self.store.keys.get("leader")
        return None if held is None else LeaderInfo(held[0].node, held[0].url, held[1])

    async def campaign(self, me: MemberInfo) -> LeaderInfo | None:
        if self.lease.lost or self._closed:
            raise LeaseLost("this node holds no lease")
        held = self.store.keys.get("leader")
        if held is None:
            await self.store.put("leader", me, self._lease)
        elif held[3] is not self._lease:
            return None
        return await self.leader()

    async def resign(self, epoch: int) -> bool:
        held = self.store.keys.get("leader")
        if held is None or held[1] != epoch:
            return False
        await self.store.delete("leader")
        return True

    async def watch_leader(self) -> AsyncIterator[LeaderInfo | None]:
        last: object = ()
        while not self._closed:
            current = await self.leader()
            state = None if current is None else (current.node, current.epoch)
            if state != last:
                last = state
                yield current
            async with self.store.changed:
                if self._closed:
                    return
                await self.store.changed.wait()

    async def isr(self) -> IsrState:
        held = self.store.keys.get("isr")
        return IsrState(epoch=0) if held is None else IsrState(held[0][0], held[0][1], held[2])

    async def set_isr(self, epoch: int, members: tuple[str, ...], expected_revision: int) -> IsrState | None:
        leader, isr = self.store.keys.get("leader"), self.store.keys.get("isr")
        if leader is None or leader[1] != epoch or (isr[2] if isr else 0) != expected_revision:
            return None
        revision = await self.store.put("isr", (epoch, tuple(members)))
        return IsrState(epoch, tuple(members), revision)
