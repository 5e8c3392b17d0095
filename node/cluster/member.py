"""One node's part in the cluster: register, watch the leader key, run for leader when eligible, and lead
(LeaderReplication) or follow (Follower). etcd decides who leads; discovery only proposes peers."""
from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable

import aiohttp

from ..errors import NotLeader, Unavailable
from ..log import Log
from .auth import PeerAuth
from .coordinator import Coordinator, CoordinatorError, LeaderInfo, MemberInfo
from .insync import MinInSyncFile
from .replication import Follower, LeaderReplication, Timing

log = logging.getLogger("evstore.cluster")

TAKEOVER_PATH = "/v1/internal/replication/takeover"
CAMPAIGN_DELAY = 0.5  # a node not named by a step-down waits this long (plus jitter) before running
RECHECK_EVERY = 1.0
STEP_DOWN_TIMEOUT = 10.0
FIRST_FETCH_WAIT = 3.0  # seconds a step-down waits for an in-sync follower's first fetch from a new leader
LEASE_SILENCE = 0.6  # keepalives go every third of the TTL: none answered for this share of it means etcd is away
LEASE_LOOK_EVERY = 0.25  # a request waiting for a leader looks this often whether etcd is still reachable


class Role(str, enum.Enum):
    """What this node does in the cluster (a str, so that /v1/cluster shows it as it is)."""
    CANDIDATE = "candidate"
    LEADER = "leader"
    FOLLOWER = "follower"

    def __str__(self) -> str:
        return self.value


class RejectingGate:
    """The write gate of a node that is not leading: nothing is written, the request may go to the leader."""

    @contextlib.asynccontextmanager
    async def writing(self):
        raise NotLeader()
        yield  # pragma: no cover

    async def committed(self, position: int) -> None:  # pragma: no cover - writing() never admits
        raise NotLeader()


@dataclass
class ClusterConfig:
    store_id: str
    node_id: str
    url: str
    secret: str
    min_in_sync: int | None = None
    cluster_size: int | None = None
    min_in_sync_file: Path | None = None  # re-read while running (the operator's ConfigMap); wins over the size
    timing: Timing = Timing()
    peer_auth_compat: bool = False  # also speak the previous version's peer protocol (a rolling upgrade)


class ClusterMember:
    def __init__(self, config: ClusterConfig, log_: Log, coordinator: Coordinator, discovery=None,
                 metrics=None) -> None:
        self.config = config
        self.log = log_
        self.forwarded_writes = 0  # writes sent on to the leader whose replies are not given yet
        self.coordinator = coordinator
        self.discovery = discovery
        self.metrics = metrics
        self.me = MemberInfo(config.node_id, config.url)
        self.peer_auth = PeerAuth(config.secret, config.store_id, compat=config.peer_auth_compat)
        self.role = Role.CANDIDATE
        self.decision = ""  # what the last control step decided (see _step)
        self.leader: LeaderInfo | None = None  # as etcd last said
        self.leading: LeaderReplication | None = None
        self.following: Follower | None = None
        self.members: list[MemberInfo] = []
        self.isr: tuple[str, ...] = ()
        self.max_members_seen = 1
        self.in_sync_file = MinInSyncFile(config.min_in_sync_file) if config.min_in_sync_file else None
        self._changed = asyncio.Event()
        self._role_changed = asyncio.Event()
        self._campaign_now = False
        self._handing_over = 0.0  # monotonic deadline: do not run for leader before it (after a step-down)
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._follow_task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._transition = asyncio.Lock()
        log_.use_write_gate(RejectingGate())

    # lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        await self.coordinator.start(self.me)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._discover(), name="evstore-discovery"),
                       loop.create_task(self._watch(), name="evstore-leader-watch"),
                       loop.create_task(self._control(), name="evstore-control"),
                       loop.create_task(self._refresh_members(), name="evstore-members")]
        if self.in_sync_file is not None:
            self._tasks.append(loop.create_task(self._reread_in_sync_file(), name="evstore-min-in-sync"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._stop_following()
        if self.leading is not None:
            epoch = self.leading.epoch
            await self._stop_leading("shutting down")
            with contextlib.suppress(CoordinatorError):
                await self.coordinator.resign(epoch)
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await self.discovery.close()  # after the tasks: start() is never half-way here
        with contextlib.suppress(Exception):
            await self.coordinator.close()
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    def min_in_sync(self) -> int:
        if self.config.min_in_sync:
            return self.config.min_in_sync
        if self.in_sync_file is not None:
            return self.in_sync_file.value
        size = self.config.cluster_size or self.max_members_seen
        return size // 2 + 1

    async def _reread_in_sync_file(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_EVERY)  # the kubelet swaps the file in; there is nothing to await
            self.in_sync_file.refresh()

    async def _discover(self) -> None:
        if self.discovery is not None:  # it only proposes peers: etcd decides, so nothing waits for it
            await self.discovery.start()

    # watching etcd -----------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            try:
                async for leader in self.coordinator.watch_leader():
                    self.leader = leader
                    self._changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the coordinator retries inside; this only guards the task itself
                log.warning("leader watch ended: %s", exc)
                await asyncio.sleep(1.0)  # bounded retry pause

    async def _refresh_members(self) -> None:
        while True:
            try:
                self.members = await self.coordinator.members()
                self.max_members_seen = max(self.max_members_seen, len(self.members))
                if self.metrics is not None:
                    self.metrics.members.set(len(self.members))
                self.isr = (await self.coordinator.isr()).members
                if self.metrics is not None and self.leading is None:
                    self.metrics.isr_size.set(len(self.isr))
            except CoordinatorError as exc:
                log.debug("member refresh failed: %s", exc)
            except Exception:  # a malformed key must not stop the refresh for good
                log.exception("member refresh failed")
            await asyncio.sleep(RECHECK_EVERY)  # periodic refresh

    async def _control(self) -> None:
        said = None
        while True:
            try:
                decision = await self._step()
            except asyncio.CancelledError:
                raise
            except CoordinatorError as exc:
                decision = f"coordinator unavailable: {exc}"
            except Exception:
                log.exception("cluster control step failed")
                decision = "the control step failed"
            if decision != said:  # each decision logged once, as Patroni's run_cycle() does
                log.info("cluster step: %s", decision)
                said = decision
            self.decision = decision
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that arrives as the event
            # fires, and close() then waits for this task forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECHECK_EVERY):
                    await self._changed.wait()
            self._changed.clear()

    async def _step(self) -> str:
        """One pass of the control loop: what it decided, as a sentence (logged when it changes, asserted in
        tests)."""
        async with self._transition:
            leader = self.leader
            stopped = ""
            if self.leading is not None:
                if leader is None or leader.node != self.me.node or leader.epoch != self.leading.epoch:
                    stopped = "the leader key is not ours any more"
                elif not self.leading.active:
                    stopped = self.leading.stop_reason or "leadership stopped"
                elif not self.leading.lease_valid():
                    stopped = "lease expired"
                else:
                    return f"leading epoch {self.leading.epoch}"
                await self._stop_leading(stopped)
                stopped = f"stopped leading ({stopped}); "
            if leader is None:
                await self._stop_following()
                return stopped + await self._maybe_campaign()
            if leader.node == self.me.node:
                # our key, but we are not leading under it (a restart, or leadership dropped while etcd was
                # away): remove it so that a fresh election, with a new epoch, follows at once
                await self._stop_following()
                await self.coordinator.resign(leader.epoch)
                return stopped + f"resigned the leader key of epoch {leader.epoch}, which this node no longer leads"
            if self.following is None or self.following.leader != leader:
                await self._follow(leader)
                if self.following is None:
                    return stopped + f"ignoring {leader.node}: epoch {leader.epoch} is older than this node's"
            return stopped + f"following {leader.node} (epoch {leader.epoch})"

    # running for leader ------------------------------------------------------------------------
    async def _maybe_campaign(self) -> str:
        self.role = Role.CANDIDATE
        if not self._campaign_now:
            if time.monotonic() < self._handing_over:
                return "no leader; not running yet: this node has just handed leadership over"
            await asyncio.sleep(CAMPAIGN_DELAY * random.random())  # jitter: fewer lost transactions
        self._campaign_now = False
        isr = await self.coordinator.isr()
        if isr.revision and self.me.node not in isr.members:
            return f"no leader; not running: not in the ISR {list(isr.members)}"
        if self.coordinator.lease.lost:
            return "no leader; not running: this node holds no etcd lease"
        if not self.coordinator.lease.surely_alive():
            # a key won now would be resigned at once (_lead checks the lease): each such round would burn an
            # epoch and make the followers chase a leader that never leads
            return "no leader; not running: this node's etcd lease is not surely alive (no recent keepalive)"
        won = await self.coordinator.campaign(self.me)
        generation = self.coordinator.lease.generation  # the lease the key was just created under
        if won is None:
            return "no leader; ran for leader and lost"
        if self.metrics is not None:
            self.metrics.elections.inc()
        return await self._lead(won, generation)

    async def _lead(self, won: LeaderInfo, generation: int) -> str:
        if won.epoch <= self.log.promised_epoch:
            # etcd's revisions went backwards (it lost its data): leading would write entries that the
            # followers reject as old. Refuse loudly rather than fork the log.
            log.error("won epoch %d, but this node already followed or led epoch %d: etcd lost its data? "
                      "not leading", won.epoch, self.log.promised_epoch)
            await self.coordinator.resign(won.epoch)
            return f"won epoch {won.epoch} but resigned: this node already knew epoch {self.log.promised_epoch}"
        isr = await self.coordinator.isr()
        if isr.revision and self.me.node not in isr.members:
            # we read the ISR before running, then stalled while another leader dropped us from it: having
            # the key now, nobody else can change the ISR, so this read is the truth
            await self.coordinator.resign(won.epoch)
            return f"won epoch {won.epoch} but resigned: the ISR {list(isr.members)} no longer has this node"
        await self.log.promise_epoch(won.epoch)
        self.log.epoch = won.epoch
        live = {m.node for m in await self.coordinator.members()} | {self.me.node}
        self.max_members_seen = max(self.max_members_seen, len(live), len(isr.members))
        members = (set(isr.members) & live) | {self.me.node}
        if len(members) < self.min_in_sync():  # never below min_in_sync: who is not live now stays eligible
            members |= set(isr.members)
        members = tuple(sorted(members))
        state = await self.coordinator.set_isr(won.epoch, members, isr.revision)
        if state is None:
            await self.coordinator.resign(won.epoch)
            return f"won epoch {won.epoch} but resigned: could not write the ISR"
        leading = LeaderReplication(self.log, self.coordinator, self.me, won.epoch, state, self.min_in_sync,
                                    self.config.timing, self.log.visible.position, self.metrics, self._deposed,
                                    lease_generation=generation)
        if not leading.lease_valid():
            await self.coordinator.resign(won.epoch)
            return f"won epoch {won.epoch} but resigned: the lease changed while taking over"
        leading.start()
        self.leading = leading
        self.leader = won
        self.isr = state.members
        self.log.use_write_gate(leading)
        self.role = Role.LEADER
        self._set_role_metrics()
        return f"won the election: leading epoch {won.epoch} with ISR {list(state.members)} " \
               f"(min in sync {self.min_in_sync()})"

    def _deposed(self, leading: LeaderReplication, reason: str) -> None:
        if leading is not self.leading:  # a late report from an epoch we no longer lead
            return
        log.warning("stepping down: %s", reason)
        if self.leading is not None:
            task = asyncio.get_running_loop().create_task(self.leading.stop(reason))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._changed.set()

    async def _stop_leading(self, reason: str) -> None:
        leading = self.leading
        if leading is None:
            return
        self.leading = None
        self.log.use_write_gate(RejectingGate())
        await leading.stop(reason)
        if leading.gave_way:  # it could not commit: let the in-sync followers elect one of themselves first
            self._handing_over = time.monotonic() + 3 * CAMPAIGN_DELAY + self.config.timing.lease_ttl
        self.role = Role.CANDIDATE
        log.warning("no longer leading epoch %d: %s", leading.epoch, reason)
        self._set_role_metrics()

    # following ---------------------------------------------------------------------------------
    def _committed_position_awaited(self) -> bool:
        """Whether a forwarded write's reply, a read or a subscription here waits for the next commit point."""
        return self.forwarded_writes > 0 or self.log.visible.awaited()

    async def _follow(self, leader: LeaderInfo) -> None:
        await self._stop_following()
        if leader.epoch < self.log.promised_epoch:
            log.warning("ignoring leader %s of old epoch %d", leader.node, leader.epoch)
            return
        await self.log.promise_epoch(leader.epoch)
        follower = Follower(self.log, self.me, leader, self.peer_auth, self.session, on_stale=self._refresh_leader,
                            metrics=self.metrics, committed_position_awaited=self._committed_position_awaited)
        self.following = follower
        self.role = Role.FOLLOWER
        self._follow_task = asyncio.get_running_loop().create_task(follower.run(), name="evstore-follow")
        log.info("following %s (epoch %d)", leader.node, leader.epoch)
        self._set_role_metrics()

    async def _stop_following(self) -> None:
        follower, task = self.following, self._follow_task
        self.following, self._follow_task = None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if follower is not None:
            self.role = Role.CANDIDATE
            self._set_role_metrics()

    async def _refresh_leader(self) -> None:
        # the leader we follow says a newer epoch exists: the watch delivers it; make the control loop look
        self._changed.set()

    def _set_role_metrics(self) -> None:
        self._role_changed.set()
        self._role_changed = asyncio.Event()
        if self.metrics is None:
            return
        self.metrics.set_role(leader=self.role is Role.LEADER, epoch=self.leader.epoch if self.leader else 0,
                              isr_size=len(self.isr))

    # serving -----------------------------------------------------------------------------------
    async def wait_for_leader(self, timeout: float) -> LeaderInfo:
        """The current leader, waiting (bounded) while an election is on."""
        deadline = time.monotonic() + timeout
        while True:
            leading = self.leading
            if self.role is Role.LEADER and leading is not None and leading.active and leading.lease_valid():
                return LeaderInfo(self.me.node, self.me.url, leading.epoch)
            if self.role is Role.FOLLOWER and self.following is not None:
                return self.following.leader
            lease = self.coordinator.lease
            if lease.lost or time.monotonic() - lease.last_refresh > LEASE_SILENCE * lease.ttl:
                # cut off from etcd: no election result can reach this node, so waiting would only hold the
                # request; answer at once (a client or a load balancer then tries another node)
                raise Unavailable("this node cannot reach the coordinator (etcd) and follows no leader",
                                  reason="no_leader")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable("no leader is known right now", reason="no_leader")
            with contextlib.suppress(asyncio.TimeoutError):  # woken by a role change, or to look at the lease
                async with asyncio.timeout(min(remaining, LEASE_LOOK_EVERY)):
                    await self._role_changed.wait()

    def next_role_change(self) -> Awaitable[bool]:
        """Completes at this node's next role change; take it before reading `role`, so none is missed."""
        return self._role_changed.wait()

    async def wait_for_leader_change(self, old: LeaderInfo, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.leader
            if self.role is Role.LEADER and self.leading is not None and self.leading.epoch != old.epoch:
                return
            if current is not None and current != old and self.role is Role.FOLLOWER:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._role_changed.wait()

    async def linearizable(self, timeout: float) -> bool:
        """Wait (bounded) until this node leads and everything it had when it took over is committed."""
        leading = self.leading
        return leading is not None and await leading.serving(timeout)

    def still_linearizable(self) -> bool:
        """This node still leads under a lease that holds (checked after a leader read, before answering)."""
        leading = self.leading
        return leading is not None and leading.still_serving()

    async def wait_visible(self, position: int, timeout: float) -> bool:
        """Wait (bounded) until reads on this node show `position`."""
        return await self.log.visible.wait_for(position, timeout=timeout)

    def deposed_by(self, epoch: int) -> None:
        """A follower fetched with a newer epoch than ours: another node leads now."""
        if self.leading is not None and epoch > self.leading.epoch:
            self._deposed(self.leading, f"a follower knows the newer epoch {epoch}")

    def ready(self) -> tuple[bool, str]:
        """Ready: the leader, or a follower in touch with it and in the in-sync set. A follower still catching up
        is not: Kubernetes would count it towards a disruption budget while an in-sync replica is evicted, and a
        client Service would send reads to a copy far behind. (No in-sync set recorded yet: a follower in touch.)"""
        if self.role is Role.LEADER:
            return True, ""
        if self.role is Role.FOLLOWER and self.following is not None and self.following.last_contact:
            if self.isr and self.me.node not in self.isr:
                return False, "catching up: not in the in-sync set yet"
            return True, ""
        return False, "no leader" if self.leader is None else "connecting to the leader"

    async def takeover(self, epoch: int) -> None:
        """Asked by the leader of `epoch` during a step-down: run for leader at once when its key goes."""
        if self.following is None or self.following.leader.epoch != epoch:
            raise Unavailable("not following that leader", reason="not_following")
        self._campaign_now = True

    async def step_down(self) -> str:
        """Hand leadership to a caught-up in-sync follower with no failed writes; the new leader's node id."""
        async with self._transition:
            leading = self.leading
            if leading is None:
                raise NotLeader()
            # a leader elected a moment ago has heard from no follower yet: wait (writes flowing) for a first fetch
            if not await leading.wait_for_in_sync_followers(FIRST_FETCH_WAIT):
                raise NoInSyncFollower()
            leading.hold_writes()
            try:
                await leading.drain(STEP_DOWN_TIMEOUT)
                targets = leading.caught_up_followers()
                if not targets:
                    raise NoInSyncFollower()
                target = targets[0]
                body = json.dumps({"epoch": leading.epoch}).encode()
                signed = self.peer_auth.sign_request("POST", target.url, TAKEOVER_PATH, body)
                headers = {**signed.headers, "Content-Type": "application/json"}
                if self.peer_auth.compat:  # the follower may still run the previous version
                    headers.update(self.peer_auth.legacy_headers())
                async with self.session.post(target.url + TAKEOVER_PATH, data=body, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=5)) as response:
                    payload = await response.read()
                    if response.status != 200:
                        raise NoInSyncFollower()
                    if not self.peer_auth.verify_reply(signed, response.status, response.headers, payload) \
                            and not self.peer_auth.compat:
                        log.warning("the takeover reply of %s is not signed with the cluster secret", target.node)
                        raise NoInSyncFollower()
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
                leading.release_writes()
                raise Unavailable(f"step-down did not complete ({type(exc).__name__}); this node still leads",
                                  reason="step_down_failed") from None
            except BaseException:
                leading.release_writes()
                raise
            self._handing_over = time.monotonic() + 3 * CAMPAIGN_DELAY + self.config.timing.lease_ttl
            epoch = leading.epoch
            await self._stop_leading("step-down")
            try:
                await self.coordinator.resign(epoch)
            except CoordinatorError as exc:  # the key then expires with our lease; the control loop retries
                log.warning("could not delete the leader key after stepping down: %s", exc)
            log.info("stepped down from epoch %d in favour of %s", epoch, target.node)
            return target.node

    def status(self) -> dict:
        """The /v1/cluster view from this node."""
        head = self.log.head
        leader = self.leader
        now = time.monotonic()
        wall = time.time()
        members: dict[str, dict] = {}
        for m in self.members:
            members[m.node] = {"node": m.node, "url": m.url, "role": "follower", "position": None,
                               "inSync": m.node in self.isr, "lag": None, "lastSeen": None}
        if self.discovery is not None:  # announced, but not registered in etcd (not running, or not allowed)
            for peer in self.discovery.peers().values():
                if peer.source == "zeroconf" and peer.node not in members:
                    members[peer.node] = {"node": peer.node, "url": peer.url, "role": "discovered",
                                          "position": None, "inSync": False, "lag": None, "lastSeen": None}
        if self.leading is not None:
            for p in self.leading.progress.values():
                entry = members.setdefault(p.node, {"node": p.node, "url": p.url, "role": "follower"})
                entry.update(position=p.durable, inSync=p.node in self.leading.isr, lag=max(0, head - p.durable),
                             lastSeen=wall - (now - p.last_fetch))
        if leader is not None and leader.node in members:
            members[leader.node]["role"] = "leader"
        members[self.me.node] = {"node": self.me.node, "url": self.me.url, "role": self.role.value,
                                 "position": head, "inSync": self.me.node in self.isr, "lag": 0, "lastSeen": wall}
        if self.following is not None:
            for node, position in self.following.member_positions.items():
                if node in members and node != self.me.node:
                    members[node].update(position=position, lag=max(0, self.following.leader_head - position))
        if self.following is not None and leader is not None and leader.node in members:
            entry = members[leader.node]
            entry.update(position=self.following.leader_head, lastSeen=wall - (now - self.following.last_contact)
                         if self.following.last_contact else None)
            members[self.me.node]["lag"] = max(0, self.following.leader_head - head)
        isr = sorted(self.leading.isr) if self.leading is not None else list(self.isr)
        return {"role": self.role.value, "leader": {"node": leader.node, "url": leader.url} if leader else None,
                "epoch": leader.epoch if leader else self.log.promised_epoch,
                "committedPosition": self.log.visible.position, "minInSync": self.min_in_sync(), "isr": isr,
                "members": sorted(members.values(), key=lambda m: m["node"])}


class NoInSyncFollower(Exception):
    pass
