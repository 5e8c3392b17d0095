"""A leader cut off from its followers (issue 11.4), in one process with a real etcd and a real SQLite log: the
ISR never shrinks below minInSync, writes that cannot commit are refused at once, and a leader that cannot
commit for a lease TTL gives way to a live in-sync follower (leaving the ISR to it), or stays when none is live.
The followers are only fetches this test makes (or does not make)."""
from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest

from evstore.node.cluster.auth import LeaderRecords
from evstore.node.cluster.coordinator import MemberInfo
from evstore.node.cluster.etcd import EtcdCoordinator
from evstore.node.cluster.replication import GIVE_WAY_MARGIN, LeaderReplication, Timing
from evstore.node.errors import Unavailable
from evstore.node.log import Log, NewEvent
from evstore.node.storage import Storage

TTL = 2.0
WAIT = 15.0
LEADER = MemberInfo("leader", "http://127.0.0.1:1")

pytestmark = pytest.mark.timeout(60)


def ev() -> NewEvent:
    return NewEvent(uuid.uuid4().bytes, "T", orjson.dumps({}), b"{}")


class Leading:
    """This process leads a store whose ISR is {leader, f1, f2} (minInSync 2); `live` followers hold a member
    key in etcd (their own lease), the others never registered."""

    def __init__(self, etcd_url: str, tmp_path, live: tuple[str, ...]) -> None:
        self.etcd_url, self.tmp_path, self.live = etcd_url, tmp_path, live
        self.store = f"t-{uuid.uuid4().hex[:8]}"
        self.coordinators: list[EtcdCoordinator] = []
        self.deposed: list[str] = []

    async def __aenter__(self) -> "Leading":
        self.storage = Storage(self.tmp_path / "leader")
        self.storage.open()
        self.log = Log(self.storage, clustered=True)
        for node in ("leader", *self.live):
            c = EtcdCoordinator((self.etcd_url,), self.store, lease_ttl=TTL,
                                leader_records=LeaderRecords("gives-way-test-secret", self.store))
            self.coordinators.append(c)
            await c.start(MemberInfo(node, f"http://127.0.0.1:1/{node}"))
            await asyncio.wait_for(c.wait_registered(), WAIT)
        coordinator = self.coordinators[0]
        won = await coordinator.campaign(LEADER)
        state = await coordinator.set_isr(won.epoch, ("f1", "f2", "leader"), 0)
        self.storage.epoch = won.epoch
        self.lead = LeaderReplication(self.log, coordinator, LEADER, won.epoch, state, lambda: 2, Timing(TTL),
                                      committed=0, on_deposed=lambda _lead, reason: self.deposed.append(reason))
        self.log.use_write_gate(self.lead)
        self.lead.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.lead.stop("test over")
        for c in self.coordinators:
            await c.close()
        self.storage.close()


async def fetching(lead: LeaderReplication, node: str, stop: asyncio.Event) -> None:
    """A follower that keeps up: it fetches from its head, as the real one does."""
    while not stop.is_set():
        head = lead.log.storage.head
        await lead.fetch(node, f"http://127.0.0.1:1/{node}", lead.epoch, head + 1, lead.log.storage.epoch_at(head))


async def until(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # the leader's periodic ISR check moves these: there is no event to await


async def test_the_isr_never_shrinks_below_min_in_sync_and_a_lost_follower_leaves_once_replaceable(etcd, tmp_path):
    async with Leading(etcd.client_url, tmp_path, live=("f1", "f2")) as leading:
        lead = leading.lead
        stop = asyncio.Event()
        follower = asyncio.create_task(fetching(lead, "f1", stop))  # f2 never fetches
        try:
            await until(lambda: lead.isr == {"leader", "f1"}, "the silent f2 to leave the ISR")
            assert (await lead.log.append("s", "any", [ev()])).position == 1  # f1 and the leader commit it
            stop.set()  # now f1 falls silent too: removing it would leave an ISR of one
            await until(lambda: len(lead.caught_up_members()) == 1, "f1 to count as lagging")
            with pytest.raises(Unavailable) as refused:
                await lead.log.append("s", "any", [ev()])
            assert refused.value.details["reason"] == "not_enough_replicas"  # at once, not after the commit timeout
            assert lead.log.head == 1  # refused before anything was written
            assert lead.isr == {"leader", "f1"} and (await lead.coordinator.isr()).members == ("f1", "leader")
        finally:
            stop.set()
            follower.cancel()


async def test_a_leader_that_cannot_commit_gives_way_to_live_in_sync_followers(etcd, tmp_path):
    async with Leading(etcd.client_url, tmp_path, live=("f1", "f2")) as leading:
        lead = leading.lead
        began = time.monotonic()
        await until(lambda: lead.gave_way, "the leader to give way")
        took = time.monotonic() - began
        # it had never heard from them: it could not commit from the start, and gives way a lease TTL later
        # (and a margin, by which a dead follower's member key is gone)
        assert TTL + GIVE_WAY_MARGIN <= took < TTL + GIVE_WAY_MARGIN + 2, took
        assert leading.deposed and "giving way" in leading.deposed[0]
        # it left the ISR to those who can be elected; the ISR did not shrink below minInSync
        assert (await lead.coordinator.isr()).members == ("f1", "f2")


async def test_a_leader_without_a_live_in_sync_follower_stays_and_refuses_writes(etcd, tmp_path):
    async with Leading(etcd.client_url, tmp_path, live=()) as leading:
        lead = leading.lead
        await until(lambda: len(lead.caught_up_members()) == 1, "the followers to count as lagging")
        for _ in range(3):  # over more than two lease TTLs: it neither gives way nor flaps
            with pytest.raises(Unavailable) as refused:
                await lead.log.append("s", "any", [ev()])
            assert refused.value.details["reason"] == "not_enough_replicas"
            await asyncio.sleep(TTL)  # the leader's own clock decides here: nothing to await but time
        assert lead.active and not lead.gave_way and not leading.deposed
        assert (await lead.coordinator.isr()).members == ("f1", "f2", "leader")


async def test_a_leader_whose_followers_died_stays_though_their_member_keys_outlive_them_a_while(etcd, tmp_path):
    """Killed followers keep their member keys until their leases expire: the leader must not give way to them."""
    async with Leading(etcd.client_url, tmp_path, live=("f1", "f2")) as leading:
        lead = leading.lead
        stop = asyncio.Event()
        followers = [asyncio.create_task(fetching(lead, node, stop)) for node in ("f1", "f2")]
        await until(lambda: all(n in lead.progress for n in ("f1", "f2")), "both followers to fetch")
        assert (await lead.log.append("s", "any", [ev()])).position == 1
        stop.set()  # both die at once: no more fetches, no more keepalives
        for c in leading.coordinators[1:]:
            c._keepalive_task.cancel()
        died = time.monotonic()
        await until(lambda: time.monotonic() - died > 2 * TTL + GIVE_WAY_MARGIN, "two lease TTLs to pass")
        for task in followers:
            task.cancel()
        assert lead.active and not lead.gave_way and not leading.deposed
        assert (await lead.coordinator.isr()).members == ("f1", "f2", "leader")
