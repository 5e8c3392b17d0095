"""The Coordinator contract, run against EtcdCoordinator (a real etcd) and InMemoryCoordinator alike, so that
election and ISR logic can be unit-tested on the in-memory one: members under leases, exclusive campaigns
with increasing epochs, resign only of one's own epoch, keys gone with the lease, the leader watch yielding
each change once, and the ISR compare-and-swap under the leader's epoch."""
from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from evstore.node.cluster.auth import LeaderRecords
from evstore.node.cluster.coordinator import InMemoryCoordinator, IsrState, LeaseLost, MemberInfo
from evstore.node.cluster.etcd import EtcdCoordinator

TTL = 2.0
WAIT = 15.0


def me(node: str) -> MemberInfo:
    return MemberInfo(node=node, url=f"http://127.0.0.1:1/{node}")


@pytest.fixture(params=["memory", "etcd"])
async def make(request, tmp_path):
    """Factory of started coordinators of one store (one per simulated node), all closed at the end."""
    made = []
    if request.param == "etcd":
        etcd = request.getfixturevalue("etcd")
        store = f"contract-{uuid.uuid4().hex[:8]}"

        async def start(node: str):
            c = EtcdCoordinator((etcd.client_url,), store, lease_ttl=TTL,
                                leader_records=LeaderRecords("contract-test-secret", store))
            made.append(c)
            await c.start(me(node))
            await asyncio.wait_for(c.wait_registered(), WAIT)
            return c
    else:
        shared = InMemoryCoordinator.Store()

        async def start(node: str):
            c = InMemoryCoordinator(shared, lease_ttl=TTL)
            made.append(c)
            await c.start(me(node))
            return c
    try:
        yield start
    finally:
        for c in made:
            await c.close()


class Watch:
    def __init__(self, coordinator) -> None:
        self.values: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run(coordinator))

    async def _run(self, coordinator) -> None:
        async for leader in coordinator.watch_leader():
            await self.values.put(leader)

    async def next(self):
        return await asyncio.wait_for(self.values.get(), WAIT)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_members_register_and_leave_with_their_lease(make):
    a, b = await make("a"), await make("b")
    assert await a.members() == [me("a"), me("b")]
    assert not a.lease.lost and a.lease.generation == 1
    await b.close()
    assert await a.members() == [me("a")]


async def test_campaigns_are_exclusive_epochs_increase_and_resign_takes_the_own_epoch_only(make):
    a, b = await make("a"), await make("b")
    first = await a.campaign(me("a"))
    assert first is not None and first.node == "a" and first.epoch > 0
    assert await b.campaign(me("b")) is None
    assert await a.campaign(me("a")) == first  # already ours: the same key, the same epoch
    assert await b.leader() == first
    assert not await b.resign(first.epoch + 1)
    assert await a.resign(first.epoch)
    assert await b.leader() is None and not await a.resign(first.epoch)
    second = await b.campaign(me("b"))
    assert second is not None and second.epoch > first.epoch


async def test_the_leader_key_goes_with_its_lease(make):
    a, b = await make("a"), await make("b")
    first = await a.campaign(me("a"))
    await a.close()
    assert await b.leader() is None
    assert (await b.campaign(me("b"))).epoch > first.epoch
    with pytest.raises(LeaseLost):
        await a.campaign(me("a"))


async def test_the_leader_watch_yields_each_change_once(make):
    a, b = await make("a"), await make("b")
    watch = Watch(b)
    try:
        assert await watch.next() is None
        first = await a.campaign(me("a"))
        assert await watch.next() == first
        assert await a.campaign(me("a")) == first
        await a.resign(first.epoch)
        assert await watch.next() is None
        second = await b.campaign(me("b"))
        assert await watch.next() == second
        assert watch.values.empty()
    finally:
        await watch.close()


async def test_the_isr_is_a_compare_and_swap_under_the_leaders_epoch(make):
    a, b = await make("a"), await make("b")
    assert await a.isr() == IsrState(epoch=0, members=(), revision=0)
    leader = await a.campaign(me("a"))
    assert await a.set_isr(leader.epoch + 1, ("a",), 0) is None
    first = await a.set_isr(leader.epoch, ("a", "b"), 0)
    assert first is not None and first.members == ("a", "b") and first.epoch == leader.epoch
    assert await b.isr() == first
    assert await a.set_isr(leader.epoch, ("a",), 0) is None  # stale expectation
    second = await a.set_isr(leader.epoch, ("a",), first.revision)
    assert second is not None and second.revision > first.revision
    await a.resign(leader.epoch)
    assert await a.set_isr(leader.epoch, ("a", "b"), second.revision) is None  # deposed
    await a.close()
    assert await b.isr() == second  # the ISR has no lease: it outlives its writer
