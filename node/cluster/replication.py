"""Log replication, Kafka ISR style: followers pull whole group commits from the leader, store them durably
and report their durable position in their next fetch; the leader acknowledges a write only once every
member of the in-sync replica set (ISR) has it and the ISR has at least `min_in_sync` members.

The leader side (`LeaderReplication`) is the log's write gate while this node leads. The follower side
(`Follower`) is one pull loop per leader epoch.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp

from ..errors import NotLeader, Unavailable
from ..log import Log
from ..position import WatchedPosition, first_reached
from .auth import MAX_CLOCK_SKEW, PeerAuth
from .coordinator import Coordinator, CoordinatorError, IsrState, LeaderInfo, MemberInfo
from .wire import decode, encode

log = logging.getLogger("evstore.replication")

FETCH_PATH = "/v1/internal/replication/fetch"
FETCH_WAIT = 0.5  # seconds a fetch waits on the leader for new entries before answering empty
# seconds a reply that would carry only a new commit point waits, when no write is on its way to the log, for
# the next entry to carry it too: at concurrency 1 that entry comes about a millisecond after the
# acknowledgement, and one exchange per write instead of two takes a quarter off the CPU a replicated write
# costs. With writes on their way (concurrent clients) the reply goes at once and the next fetch waits for them;
# so it does when the follower has something waiting for the commit point ("eager" in its fetch).
NEWS_DELAY = 0.002
FETCH_TIMEOUT = 10.0
FETCH_CONNECT_TIMEOUT = 2.0  # a leader behind a partition drops the connection attempt: try again sooner
ISR_CHECK_EVERY = 0.2
PERSIST_COMMITTED_EVERY = 1.0  # an idle follower writes its committed position at most this often
# a leader gives way this long after a lease TTL without a commit: a follower that died right after its last
# fetch (a healthy one fetches every FETCH_WAIT) has lost its member key by then, so it does not look live
GIVE_WAY_MARGIN = FETCH_WAIT + 1.0


@dataclass(frozen=True)
class Timing:
    lease_ttl: float = 5.0

    @property
    def lag_timeout(self) -> float:
        """A follower that has not caught up for this long leaves the ISR."""
        return max(1.0, self.lease_ttl)

    @property
    def commit_timeout(self) -> float:
        """How long a write waits for the ISR: longer than removing a dead follower takes."""
        return 2 * self.lag_timeout + 2.0


@dataclass
class Progress:
    node: str
    url: str = ""
    durable: int = 0  # the follower's matched, durable head (0 until it fetched from this leader)
    head_at_reply: int = 0  # the leader's head when it answered this follower's previous fetch
    committed_told: int = 0  # the committed position this follower last heard from us
    last_fetch: float = 0.0  # monotonic
    last_caught_up: float = 0.0
    lag_observed: bool = False  # its lag gauges read this progress when scraped


@dataclass
class FetchReply:
    status: str  # "ok" | "diverged"
    rows: list = field(default_factory=list)  # stored rows, flat (storage.STORED_COLUMNS per record)
    committed: int = 0
    head: int = 0
    epoch: int = 0
    end: int = 0
    positions: dict = field(default_factory=dict)  # node -> durable position, as the leader knows them


class EpochMismatch(Exception):
    def __init__(self, leader_epoch: int, stale_leader: bool) -> None:
        super().__init__(f"leader epoch is {leader_epoch}")
        self.leader_epoch = leader_epoch
        self.stale_leader = stale_leader


class LeaderReplication:
    """The leader's view of replication, and the log's write gate while this node leads epoch `epoch`."""

    def __init__(self, log_: Log, coordinator: Coordinator, me: MemberInfo, epoch: int, isr: IsrState,
                 min_in_sync: Callable[[], int], timing: Timing, committed: int, metrics=None,
                 on_deposed: Callable[["LeaderReplication", str], None] | None = None,
                 lease_generation: int | None = None) -> None:
        self.log = log_
        self.coordinator = coordinator
        self.me = me
        self.epoch = epoch
        self.isr: frozenset[str] = frozenset(isr.members) | {me.node}
        self.isr_revision = isr.revision
        self.min_in_sync = min_in_sync
        self.timing = timing
        self.metrics = metrics
        self.on_deposed = on_deposed
        log_.visible.advance(min(committed, log_.head))
        # everything the previous leader may have acknowledged is in this log (it was in the ISR): once the ISR
        # has all of it, it is committed, and reads here are linearizable
        self.head_at_start = log_.head
        self._serving = asyncio.Event()
        self.progress: dict[str, Progress] = {}
        self.started = time.monotonic()
        self.active = True
        # the lease the leader key was created under: a later lease does not hold the key
        self.lease_generation = coordinator.lease.generation if lease_generation is None else lease_generation
        self._lease_ok = True
        self._wakeups: set[asyncio.Future] = set()  # waits that end early when leadership stops
        self._open = asyncio.Event()
        self._open.set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._isr_lock = asyncio.Lock()
        self._adding: set[str] = set()
        self._look_again_at = 0.0  # monotonic: when to look again for a follower to give way to
        self._deposed_reported = False
        self.stop_reason = ""
        self.gave_way = False  # stopped because it could not commit while live in-sync followers could
        self._tasks: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    @property
    def committed_position(self) -> int:
        """What every in-sync replica has durable: the log's visible position (Kafka's high watermark)."""
        return self.log.visible.position

    def start(self) -> None:
        self.log.keep_recent_commits(True)
        self._advance()  # an ISR of this node alone commits what it has at once
        self._task = asyncio.get_running_loop().create_task(self._maintain(), name="evstore-isr")

    async def stop(self, reason: str) -> None:
        """Stop leading: fail every waiting write (its outcome is unknown) and refuse new ones."""
        if not self.active:
            return
        self.active = False
        self.stop_reason = reason
        self.log.keep_recent_commits(False)
        self._open.set()
        for wakeup in self._wakeups:
            if not wakeup.done():
                wakeup.set_result(None)
        for task in list(self._tasks):
            task.cancel()
        if self.metrics is not None:
            for node in self.progress:
                with contextlib.suppress(KeyError):
                    self.metrics.replication_lag_events.remove(node)
                    self.metrics.replication_lag_seconds.remove(node)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # the write gate ----------------------------------------------------------------------------
    async def serving(self, timeout: float) -> bool:
        """Wait (bounded) until everything this node had when it took over is committed: only then are its
        reads linearizable (Raft's leader commits an entry of its own term first, for the same reason)."""
        self._advance()
        if not self._serving.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._serving.wait()
        return self.still_serving()

    def still_serving(self) -> bool:
        """Reads here are linearizable right now: it took over completely, still leads, and its lease holds (a
        leader paused past its lease must not answer from its log: another may have acknowledged writes)."""
        return self._serving.is_set() and self.active and self.lease_valid()

    def lease_valid(self) -> bool:
        """True while the lease our leader key lives under is surely alive; once false, false for good (a
        new lease after a loss does not bring the key back)."""
        if self._lease_ok:
            lease = self.coordinator.lease
            self._lease_ok = lease.generation == self.lease_generation and lease.surely_alive()
        return self._lease_ok

    def _check_can_write(self) -> None:
        if not self.active:
            raise NotLeader()
        if not self.lease_valid():
            raise NotLeader("this node's leadership lease is not current")

    @contextlib.asynccontextmanager
    async def writing(self):
        if not self._open.is_set():  # a step-down is handing over: hold the write, then send it on
            await self._open.wait()
        self._check_can_write()
        if len(self.isr) < self.min_in_sync():
            raise Unavailable(f"only {len(self.isr)} in-sync replicas, {self.min_in_sync()} needed",
                              reason="not_enough_replicas", isr=sorted(self.isr))
        reachable = self.caught_up_members()
        if len(reachable) < self.min_in_sync():  # it could not commit: say so at once instead of in 12 s
            raise Unavailable(f"only {len(reachable)} in-sync replicas are caught up, {self.min_in_sync()} needed",
                              reason="not_enough_replicas", isr=sorted(self.isr), caughtUp=sorted(reachable))
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def committed(self, position: int) -> None:
        self._advance()
        if not self.active:
            raise Unavailable("leadership lost before the write was acknowledged; its outcome is unknown: "
                              "retry it with the same event ids", reason="leadership_lost")
        if position > self.committed_position and not await self._wait_until(
                self.timing.commit_timeout, (self.log.visible, position)):
            if self.active:
                raise Unavailable("the in-sync replicas did not confirm the write in time; its outcome is "
                                  "unknown: retry it with the same event ids", reason="replication_timeout")
        # fencing: a leader that was stalled past its lease must not acknowledge anything
        if not self.active or not self.lease_valid():
            raise Unavailable("leadership lost before the write was acknowledged; its outcome is unknown: "
                              "retry it with the same event ids", reason="leadership_lost")

    async def _wait_until(self, timeout: float, *targets: tuple[WatchedPosition, int]) -> bool:
        """Wait until one of the positions reaches its target: True; False on timeout or when leadership
        stops meanwhile."""
        wakeup = asyncio.get_running_loop().create_future()
        self._wakeups.add(wakeup)
        try:
            return await first_reached(list(targets), timeout=timeout, also=wakeup) and self.active
        finally:
            self._wakeups.discard(wakeup)

    def _advance(self) -> None:
        if len(self.isr) < self.min_in_sync():
            return
        head = self.log.head
        committed_position = head
        # members being added count already: etcd may list them before we hear back (Kafka's maximal ISR)
        for node in self.isr | self._adding:
            if node != self.me.node:
                progress = self.progress.get(node)
                committed_position = min(committed_position, progress.durable if progress else 0)
        if not self.active:
            return
        moved = self.log.visible.advance(committed_position)
        # checked even when nothing moved: a log that was all committed already (or is empty) has nothing to wait for
        if committed_position >= self.head_at_start and not self._serving.is_set():
            self._serving.set()
            self.log.committed_position_known()
        if not moved:
            return
        if self.metrics is not None:
            self.metrics.committed_position.set(committed_position)

    # fetches from followers --------------------------------------------------------------------
    async def fetch(self, node: str, url: str, epoch: int, first: int, prev_epoch: int, *,
                    eager: bool = False) -> FetchReply:
        """`eager`: the follower has something waiting for the next commit point (a forwarded write's reply, a
        read, a subscription), so a reply with only that news goes at once."""
        log_ = self.log
        if epoch != self.epoch or not self.active:
            raise EpochMismatch(self.epoch, stale_leader=epoch > self.epoch or not self.active)
        prev = first - 1
        if prev > log_.head or (prev > 0 and log_.epoch_at(prev) != prev_epoch):
            found, end = log_.end_of_epoch(prev_epoch)
            return FetchReply("diverged", epoch=found, end=min(end, prev), committed=self.committed_position,
                              head=log_.head)
        now = time.monotonic()
        progress = self.progress.setdefault(node, Progress(node))
        progress.url = url
        progress.durable = prev
        progress.last_fetch = now
        if prev >= progress.head_at_reply:  # it has all the leader had when it last answered (Kafka's rule)
            progress.last_caught_up = now
        self._advance()
        if node not in self.isr and prev >= self.committed_position and node not in self._adding:
            self._adding.add(node)
            task = asyncio.get_running_loop().create_task(self._change_isr(add=node))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if first > log_.head and self.committed_position <= progress.committed_told:
            # nothing new to ship and nothing new to tell: wait for either (the follower's readers wait
            # for the committed position, so it is news worth an early answer)
            await self._wait_until(FETCH_WAIT, (self.log.written, first),
                                   (self.log.visible, progress.committed_told + 1))
        if self.active and first > log_.head and self.committed_position > progress.committed_told and not eager and \
                not log_.writes_in_flight:  # news, and nothing to ship yet
            await self._wait_until(NEWS_DELAY, (self.log.written, first))
        if not self.active:
            raise EpochMismatch(self.epoch, stale_leader=True)
        progress.head_at_reply = log_.head
        progress.committed_told = self.committed_position
        rows = await self.log.rows_from(first) if first <= log_.head else []
        self._observe_lag(progress)
        return FetchReply("ok", rows, committed=self.committed_position, head=log_.head, epoch=self.epoch,
                          positions={p.node: p.durable for p in self.progress.values()})

    def _observe_lag(self, progress: Progress) -> None:
        """The lag gauges are computed when scraped, from what the follower last reported: a follower that has
        everything is 0 s behind, however long its long-poll waits; one that is behind is as far behind as the
        time since it last had all that the leader had shipped."""
        if self.metrics is None or progress.lag_observed:
            return
        progress.lag_observed = True
        log_ = self.log
        self.metrics.replication_lag_events.labels(follower=progress.node).set_function(
            lambda: max(0, log_.head - progress.durable))
        self.metrics.replication_lag_seconds.labels(follower=progress.node).set_function(
            lambda: 0.0 if progress.durable >= log_.head else max(0.0, time.monotonic() - progress.last_caught_up))

    # the ISR -----------------------------------------------------------------------------------
    async def _maintain(self) -> None:
        while self.active:
            try:
                await self._maintain_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ISR maintenance failed")
            if self._deposed_reported:
                return

    def caught_up_members(self, now: float | None = None) -> frozenset[str]:
        """The ISR members that caught up within the lag timeout (this node always): those a commit can count
        on now. The others are unreachable or too slow."""
        now = time.monotonic() if now is None else now
        members = {self.me.node}
        for node in self.isr - {self.me.node}:
            progress = self.progress.get(node)
            caught_up = progress.last_caught_up if progress else 0.0
            if now - max(caught_up, self.started) <= self.timing.lag_timeout:
                members.add(node)
        return frozenset(members)

    def last_commit_possible(self, now: float) -> float:
        """The last moment at which min_in_sync ISR members (this node included) had caught up, so that the
        commit point could advance (`now` while it still can). A leader that could not commit for a lease TTL
        gives way to a live in-sync follower."""
        needed = self.min_in_sync() - 1  # followers needed besides this node
        if needed <= 0:
            return now
        caught_up = sorted((max(self.progress[n].last_caught_up if n in self.progress else 0.0, self.started)
                            for n in self.isr - {self.me.node}), reverse=True)
        return caught_up[needed - 1] if len(caught_up) >= needed else self.started

    async def _maintain_once(self) -> None:
        await asyncio.sleep(ISR_CHECK_EVERY)  # a periodic check, not a synchronisation
        if not self.lease_valid():
            self._report_deposed("lease expired")
            return
        if self.committed_position > self.log.persisted_committed:
            await self.log.persist_committed(self.committed_position)
        now = time.monotonic()
        caught_up = self.caught_up_members(now)
        if len(caught_up) >= self.min_in_sync():
            # the ISR never shrinks below min_in_sync: a lagging member leaves only while enough caught-up ones
            # stay (a caught-up follower is added before an unreachable one goes); otherwise it stays eligible
            for node in sorted(self.isr - caught_up):
                await self._change_isr(remove=node)
        elif now - self.last_commit_possible(now) >= self.timing.lease_ttl + GIVE_WAY_MARGIN \
                and now >= self._look_again_at:
            await self._give_way_if_someone_can(caught_up)
        for progress in self.progress.values():
            self._observe_lag(progress)

    def _report_deposed(self, reason: str) -> None:
        if self.on_deposed is not None:
            self.on_deposed(self, reason)
        self._deposed_reported = True

    async def _give_way_if_someone_can(self, caught_up: frozenset[str]) -> None:
        """This leader has not been able to commit for a lease TTL. When a live in-sync follower exists (its
        member key is alive in etcd, and as an ISR member it has everything committed), leave the ISR (if it
        stays at min_in_sync or more) and stop leading, so that the followers elect one of themselves. Else
        stay: writes are answered 503 at once, and nobody else could do better."""
        try:
            live = {m.node for m in await self.coordinator.members()}
        except CoordinatorError as exc:
            log.debug("cannot tell which followers are live: %s", exc)
            return
        eligible = sorted((self.isr & live) - {self.me.node})
        if not eligible:
            self._look_again_at = time.monotonic() + self.timing.lease_ttl  # stay, and do not flap
            return
        async with self._isr_lock:
            rest = tuple(sorted(self.isr - {self.me.node}))
            if self.active and len(rest) >= self.min_in_sync():
                try:
                    state = await self.coordinator.set_isr(self.epoch, rest, self.isr_revision)
                except CoordinatorError as exc:
                    log.warning("could not leave the ISR before giving way: %s", exc)
                else:
                    if state is not None:
                        self.isr, self.isr_revision = frozenset(state.members), state.revision
                        log.info("ISR is now %s (this leader left it to give way)", sorted(self.isr))
        self.gave_way = True
        self._report_deposed(f"no commit for {self.timing.lease_ttl + GIVE_WAY_MARGIN:g}s (caught up: "
                             f"{sorted(caught_up)}); "
                             f"giving way to the in-sync followers {eligible}")

    async def _change_isr(self, add: str | None = None, remove: str | None = None) -> None:
        try:
            await self._change_isr_locked(add, remove)
        finally:
            self._adding.discard(add)

    async def _change_isr_locked(self, add: str | None, remove: str | None) -> None:
        async with self._isr_lock:
            if not self.active:
                return
            members = set(self.isr)
            if add is not None:
                progress = self.progress.get(add)
                if add in members or progress is None or progress.durable < self.committed_position:
                    return
                members.add(add)
            if remove is not None:
                if remove not in members or len(members) - 1 < self.min_in_sync():
                    return  # never below min_in_sync: the member stays eligible for leader
                members.discard(remove)
            try:
                state = await self.coordinator.set_isr(self.epoch, tuple(sorted(members)), self.isr_revision)
            except CoordinatorError as exc:
                if add is not None and self.on_deposed is not None:
                    # etcd may hold the larger ISR without our knowing: stop acknowledging against the smaller
                    self.on_deposed(self, f"outcome of an ISR change unknown: {exc}")
                else:  # a removal that may not have happened: keeping the larger set is safe
                    log.warning("could not update the ISR: %s", exc)
                return
            if state is None:  # the leader key is not ours any more, or someone else wrote the ISR
                if self.on_deposed is not None:
                    self.on_deposed(self, "ISR compare-and-swap failed")
                return
            self.isr = frozenset(state.members)
            self.isr_revision = state.revision
            log.info("ISR is now %s (%s)", sorted(self.isr), f"added {add}" if add else f"removed {remove}")
            if self.metrics is not None:
                self.metrics.isr_size.set(len(self.isr))
            self._advance()

    # planned switchover ------------------------------------------------------------------------
    def hold_writes(self) -> None:
        self._open.clear()

    def release_writes(self) -> None:
        self._open.set()

    async def drain(self, timeout: float) -> None:
        """Wait until every admitted write finished and the whole log is committed."""
        deadline = time.monotonic() + timeout
        async with asyncio.timeout(timeout):
            await self._idle.wait()
        while self.committed_position < self.log.head:
            if not self.active:
                raise NotLeader()
            if time.monotonic() > deadline:
                raise Unavailable("the in-sync replicas did not catch up in time", reason="step_down_timeout")
            await self._wait_until(min(0.05, max(0.0, deadline - time.monotonic())),
                                   (self.log.visible, self.log.head))
            self._advance()

    def caught_up_followers(self) -> list[Progress]:
        head = self.log.head
        return [p for node, p in sorted(self.progress.items())
                if node in self.isr and node != self.me.node and p.durable >= head]

    async def wait_for_in_sync_followers(self, timeout: float) -> bool:
        """Whether an in-sync follower has fetched from this leader, waiting up to `timeout` for one: a leader just
        elected has heard from none until their first fetch from it."""
        deadline = time.monotonic() + timeout
        while self.active:
            if [p for p in self.progress.values() if p.node in self.isr and p.node != self.me.node]:
                return True
            if time.monotonic() >= deadline:
                return False
            await self._wait_until(min(0.05, max(0.0, deadline - time.monotonic())),
                                   (self.log.visible, self.log.head))
        return False


class Follower:
    """Pull the log from one leader (one epoch) until cancelled."""

    def __init__(self, log_: Log, me: MemberInfo, leader: LeaderInfo, peer_auth: PeerAuth,
                 session: aiohttp.ClientSession, on_stale: Callable[[], Awaitable[None]] | None = None,
                 metrics=None, committed_position_awaited: Callable[[], bool] | None = None) -> None:
        self.log = log_
        self.committed_position_awaited = committed_position_awaited or (lambda: False)
        self.me = me
        self.leader = leader
        self.peer_auth = peer_auth
        self.metrics = metrics
        self.session = session
        self.leader_head = 0
        self.member_positions: dict[str, int] = {}  # the other followers, as the leader last reported them
        self.last_contact = 0.0
        self.on_stale = on_stale
        self._persisted_at = 0.0

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._fetch_once()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except EpochMismatch as exc:
                if exc.leader_epoch > self.leader.epoch and self.on_stale is not None:
                    await self.on_stale()
                await asyncio.sleep(backoff)  # wait for etcd to tell the new leader; a bounded backoff
                backoff = min(1.0, backoff * 2)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, Unavailable) as exc:
                log.debug("fetch from %s failed: %s", self.leader.url, exc)
                await asyncio.sleep(backoff)  # the leader is unreachable: retry with a bounded backoff
                backoff = min(1.0, backoff * 2)
            except Exception:  # a refused payload or a local write error: never let the pull loop die
                log.exception("replication from %s failed", self.leader.url)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)

    async def _fetch_once(self) -> None:
        log_ = self.log
        head = log_.head
        body = json.dumps({"node": self.me.node, "url": self.me.url, "epoch": self.leader.epoch, "from": head + 1,
                           "prevEpoch": log_.epoch_at(head), "rows": True,
                           "eager": self.committed_position_awaited()}).encode()
        # a leader of the previous version (an unsigned record, honoured only in compat mode) knows only its
        # static token; any other leader gets a signature that is worth nothing for another request
        signed = None if self.leader.legacy else self.peer_auth.sign_request("POST", self.leader.url, FETCH_PATH,
                                                                                body)
        headers = self.peer_auth.legacy_headers() if signed is None else signed.headers
        async with self.session.post(self.leader.url + FETCH_PATH, data=body,
                                     headers={**headers, "Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT,
                                                                   sock_connect=FETCH_CONNECT_TIMEOUT)) as response:
            payload = await response.read()
            if response.status == 401:
                log.warning("the leader %s refused our peer signature: is the cluster secret the same on every "
                            "node, and are the clocks within %gs?", self.leader.node, MAX_CLOCK_SKEW)
                raise Unavailable(f"leader answered 401: {payload[:200]!r}")
            if signed is not None and not self.peer_auth.verify_reply(signed, response.status, response.headers,
                                                                      payload):
                if self.metrics is not None:
                    self.metrics.peer_auth_rejected.labels(reason="reply_unsigned").inc()
                raise Unavailable(f"the reply of {self.leader.node} (status {response.status}) is not signed with "
                                  "the cluster secret: is the secret the same on every node?")
            if response.status == 409:
                info = await response.json(content_type=None) if payload else {}
                if info.get("error") == "diverged":
                    await self._truncate(int(info["epoch"]), int(info["end"]))
                    return
                raise EpochMismatch(int(info.get("leaderEpoch", 0)), stale_leader=False)
            if response.status != 200:
                raise Unavailable(f"leader answered {response.status}: {payload[:200]!r}")
            leader_epoch = int(response.headers.get("X-Evstore-Epoch", "0"))
            committed = int(response.headers.get("X-Evstore-Committed", "0"))
            self.leader_head = int(response.headers.get("X-Evstore-Head", "0"))
            self.member_positions = parse_positions(response.headers.get("X-Evstore-Positions", ""))
        if leader_epoch != self.leader.epoch or leader_epoch < log_.promised_epoch:
            raise EpochMismatch(leader_epoch, stale_leader=False)  # entries of an older epoch: reject them
        self.last_contact = time.monotonic()
        rows = decode(payload)
        if log_.head != head:
            return  # our head moved meanwhile (an earlier write landed): ask again from the new head
        if rows:
            apply = asyncio.ensure_future(self.log.apply_replicated_rows(rows, committed))
            try:
                await asyncio.shield(apply)
            except asyncio.CancelledError:
                await apply  # never leave a half-known write behind when the leader changes
                raise
        visible = self.log.visible
        visible.advance(min(committed, log_.head))  # the leader's commit point, as far as we have it
        # what this node showed before a restart was committed then, and is in its log: it shows at least that now
        self.log.committed_position_known()
        if not rows and visible.position > log_.persisted_committed and \
                time.monotonic() - self._persisted_at > PERSIST_COMMITTED_EVERY:
            self._persisted_at = time.monotonic()  # an idle follower remembers the last commit too
            await self.log.persist_committed(visible.position)

    async def _truncate(self, leader_epoch: int, leader_end: int) -> None:
        log_ = self.log
        _own_epoch, own_end = log_.end_of_epoch(leader_epoch)
        target = min(leader_end, own_end, log_.head)
        if target < self.log.visible.position:
            log.error("refusing to truncate below the committed position %d (leader asked for %d)",
                      self.log.visible.position, target)
            raise Unavailable("divergence below the committed position")
        log.warning("truncating the log after position %d (uncommitted entries the leader does not have)",
                    target)
        truncation = asyncio.ensure_future(self.log.truncate_after(target))
        try:
            await asyncio.shield(truncation)
        except asyncio.CancelledError:
            await truncation
            raise


def reply_headers(reply: FetchReply) -> dict[str, str]:
    return {"X-Evstore-Epoch": str(reply.epoch), "X-Evstore-Committed": str(reply.committed),
            "X-Evstore-Head": str(reply.head),
            "X-Evstore-Positions": ",".join(f"{node}={position}" for node, position in reply.positions.items())}


def parse_positions(header: str) -> dict[str, int]:
    """The followers' positions the leader sends along (node ids have no ',' or '=')."""
    positions: dict[str, int] = {}
    for item in header.split(","):
        node, _, position = item.partition("=")
        if node and position.isdigit():
            positions[node] = int(position)
    return positions


def reply_body(reply: FetchReply, *, rows: bool) -> bytes:
    return encode(reply.rows, as_rows=rows)
