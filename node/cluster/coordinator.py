"""The small interface the cluster needs from a coordination service (etcd here; another could replace it).

Keys live under /evstore/<store>/: `members/<node>` (JSON MemberInfo, under this node's lease), `leader`
(JSON {"node", "url", ...} signed with the cluster secret (auth.LeaderRecords), under the leader's lease; its
create revision is the epoch) and `isr` (JSON IsrState,
no lease: it outlives every node so that only in-sync members may run for leader after a full restart).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol


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
