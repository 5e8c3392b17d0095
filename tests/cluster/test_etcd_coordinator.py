"""EtcdCoordinator against real etcd processes: membership under leases, exclusive campaigns with increasing
epochs, the leader key vanishing with its lease, the leader watch, ISR compare-and-swap, and surviving an etcd
restart or the loss of the etcd member in use."""
from __future__ import annotations

import asyncio
import contextlib
import time

import aetcd
import pytest

from evstore.client.harness.localnode import free_port
from evstore.node.cluster.coordinator import CoordinatorError, IsrState, LeaderInfo, LeaseLost, MemberInfo
from evstore.node.cluster.auth import LeaderRecords
from evstore.node.cluster.etcd import EtcdCoordinator

TTL = 2.0  # about the smallest lease TTL etcd grants
WAIT = 15.0  # bound on anything that waits for a TTL or for etcd to come back
STORE = "store1"
RECORDS = LeaderRecords("coordinator-test-secret", STORE)


def me(node: str) -> MemberInfo:
    return MemberInfo(node=node, url=f"http://127.0.0.1:1/{node}")


@pytest.fixture
async def coordinator():
    """Factory of started coordinators (registered before returned), all closed at the end."""
    made: list[EtcdCoordinator] = []

    async def make(endpoints, node: str, **kwargs) -> EtcdCoordinator:
        c = EtcdCoordinator(tuple(endpoints), STORE, lease_ttl=TTL, leader_records=RECORDS, **kwargs)
        made.append(c)
        await c.start(me(node))
        await asyncio.wait_for(c.wait_registered(), WAIT)
        return c

    try:
        yield make
    finally:
        for c in made:
            await c.close()


class LeaderWatch:
    """Collects what watch_leader yields, so a test can await the next value with a bound."""

    def __init__(self, coordinator: EtcdCoordinator) -> None:
        self.values: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(coordinator))

    async def _run(self, coordinator: EtcdCoordinator) -> None:
        async for leader in coordinator.watch_leader():
            await self.values.put(leader)

    async def next(self) -> LeaderInfo | None:
        return await asyncio.wait_for(self.values.get(), WAIT)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def watches():
    made: list[LeaderWatch] = []

    def watch(coordinator: EtcdCoordinator) -> LeaderWatch:
        made.append(LeaderWatch(coordinator))
        return made[-1]

    try:
        yield watch
    finally:
        for w in made:
            await w.close()


async def until(condition, timeout: float = WAIT) -> None:
    """Poll a state that has no event of its own (what etcd holds, a coordinator's lease status)."""
    async def loop():
        while not await condition():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(loop(), timeout)


async def refreshed_since(coordinator: EtcdCoordinator, moment: float) -> bool:
    """The coordinator holds a lease that etcd confirmed after `moment` (monotonic)."""
    return not coordinator.lease.lost and coordinator.lease.last_refresh >= moment


@contextlib.asynccontextmanager
async def raw_client(url: str):
    host, port = url.removeprefix("http://").split(":")
    client = aetcd.Client(host=host, port=int(port), timeout=5)
    try:
        yield client
    finally:
        await client.close()


async def test_members_register_under_their_lease(etcd, coordinator):
    a = await coordinator([etcd.client_url], "a")
    b = await coordinator([etcd.client_url], "b")
    assert await a.members() == [me("a"), me("b")]
    assert not a.lease.lost and a.lease.last_refresh > 0
    await b.close()  # revokes b's lease: its member key is gone at once
    assert await a.members() == [me("a")]


async def test_campaign_is_exclusive_and_epochs_increase(etcd, coordinator):
    a = await coordinator([etcd.client_url], "a")
    b = await coordinator([etcd.client_url], "b")
    first = await a.campaign(me("a"))
    assert first is not None and first.node == "a" and first.epoch > 0
    assert await b.campaign(me("b")) is None
    assert await a.campaign(me("a")) == first  # already ours: same key, same epoch
    assert await a.leader() == first == await b.leader()

    assert not await a.resign(first.epoch + 1)
    assert await a.resign(first.epoch)
    assert await b.leader() is None
    assert not await a.resign(first.epoch)

    second = await b.campaign(me("b"))
    assert second is not None and second.node == "b" and second.epoch > first.epoch
    assert await a.campaign(me("a")) is None


async def test_close_revokes_the_leader_key_at_once(etcd, coordinator):
    a = await coordinator([etcd.client_url], "a")
    b = await coordinator([etcd.client_url], "b")
    first = await a.campaign(me("a"))
    await a.close()
    assert await b.leader() is None
    second = await b.campaign(me("b"))
    assert second is not None and second.epoch > first.epoch
    with pytest.raises(LeaseLost):
        await a.campaign(me("a"))


async def test_leader_key_expires_when_keepalive_stops(etcd, coordinator, watches):
    a = await coordinator([etcd.client_url], "a")
    b = await coordinator([etcd.client_url], "b")
    leader = await a.campaign(me("a"))
    watch = watches(b)
    assert await watch.next() == leader
    a._keepalive_task.cancel()  # as if the node froze: nothing refreshes its lease any more
    assert await watch.next() is None  # etcd expired the lease after its TTL
    assert await b.members() == [me("b")]
    assert (await b.campaign(me("b"))).epoch > leader.epoch


async def test_lease_revoked_in_etcd_is_replaced_and_member_re_registered(etcd, coordinator, watches):
    a = await coordinator([etcd.client_url], "a")
    b = await coordinator([etcd.client_url], "b")
    leader = await a.campaign(me("a"))
    watch = watches(b)
    assert await watch.next() == leader
    async with raw_client(etcd.client_url) as raw:
        member_key = f"/evstore/{STORE}/members/a".encode()
        old_lease = (await raw.get(member_key)).lease
        await raw.revoke_lease(old_lease)
        assert await watch.next() is None  # the leader key went with the lease

        async def re_registered() -> bool:
            found = await raw.get(member_key)
            return found is not None and found.lease != old_lease and not a.lease.lost
        await until(re_registered)
    again = await a.campaign(me("a"))
    assert again is not None and again.epoch > leader.epoch
    assert await watch.next() == again


async def test_watch_leader_yields_each_change_once(etcd, coordinator, watches):
    a = await coordinator([etcd.client_url], "a")
    b = await coordinator([etcd.client_url], "b")
    watch = watches(b)
    assert await watch.next() is None
    first = await a.campaign(me("a"))
    assert await watch.next() == first
    assert await a.campaign(me("a")) == first
    await a.resign(first.epoch)
    assert await watch.next() is None
    second = await b.campaign(me("b"))
    assert await watch.next() == second
    assert watch.values.empty()  # the repeated campaign produced nothing


async def test_a_watch_from_a_compacted_revision_asks_for_a_re_read(etcd, coordinator):
    from evstore.node.cluster.etcd import _Compacted
    a = await coordinator([etcd.client_url], "a")
    for _ in range(2):
        await a.resign((await a.campaign(me("a"))).epoch)
    async with raw_client(etcd.client_url) as raw:
        current = (await raw.put(b"/unrelated", b"x")).header.revision
        await raw.compact(current, physical=True)
    events = a._leader_events(1)
    with pytest.raises(_Compacted):
        await asyncio.wait_for(events.__anext__(), WAIT)
    await events.aclose()
    assert await a.leader() is None


async def test_set_isr_is_a_compare_and_swap_under_the_epoch(etcd, coordinator):
    a = await coordinator([etcd.client_url], "a")
    b = await coordinator([etcd.client_url], "b")
    assert await a.isr() == IsrState(epoch=0, members=(), revision=0)
    leader = await a.campaign(me("a"))
    assert await a.set_isr(leader.epoch + 1, ("a",), 0) is None  # not the leader's epoch

    first = await a.set_isr(leader.epoch, ("a", "b"), 0)
    assert first is not None and first.members == ("a", "b") and first.epoch == leader.epoch
    assert first.revision > leader.epoch
    assert await b.isr() == first
    assert await a.set_isr(leader.epoch, ("a",), 0) is None  # stale: the key exists now

    second = await a.set_isr(leader.epoch, ("a",), first.revision)
    assert second is not None and second.revision > first.revision
    assert await a.set_isr(leader.epoch, ("a", "b"), first.revision) is None

    await a.resign(leader.epoch)
    assert await a.set_isr(leader.epoch, ("a", "b"), second.revision) is None  # deposed
    await a.close()
    assert await b.isr() == second  # the ISR has no lease: it outlives its writer


async def test_errors_surface_as_coordinator_errors():
    ups: list[bool] = []
    c = EtcdCoordinator((f"http://127.0.0.1:{free_port()}",), STORE, lease_ttl=TTL, on_etcd_up=ups.append,
                        leader_records=RECORDS)
    try:
        await c.start(me("a"))  # tolerated: the keepalive keeps trying
        assert c.lease.lost
        with pytest.raises(CoordinatorError):
            await c.members()
        with pytest.raises(LeaseLost):
            await c.campaign(me("a"))
        assert ups and not ups[-1]
    finally:
        await c.close()


async def test_survives_an_etcd_restart(etcd, coordinator, watches):
    went_down, came_back = asyncio.Event(), asyncio.Event()

    def on_up(up: bool) -> None:
        if not up:
            went_down.set()
        elif went_down.is_set():
            came_back.set()

    a = await coordinator([etcd.client_url], "a", on_etcd_up=on_up)
    b = await coordinator([etcd.client_url], "b")
    leader = await a.campaign(me("a"))
    watch = watches(b)
    assert await watch.next() == leader

    etcd.kill()
    await asyncio.wait_for(went_down.wait(), WAIT)
    with pytest.raises(CoordinatorError):
        await b.leader()
    await asyncio.to_thread(etcd.restart)
    restarted = time.monotonic()
    await asyncio.wait_for(came_back.wait(), WAIT)
    await until(lambda: refreshed_since(a, restarted))
    await until(lambda: refreshed_since(b, restarted))
    assert await a.members() == [me("a"), me("b")]

    # Either a kept its lease across the restart (etcd resets lease TTLs) or it replaced it and revoked the old
    # one; in both cases the leader key can change hands again and the watch sees it.
    current = await a.leader()
    if current is not None:
        assert current == leader
        assert await a.resign(current.epoch)
    assert await watch.next() is None
    second = await b.campaign(me("b"))
    assert second is not None and second.epoch > leader.epoch
    assert await watch.next() == second


async def test_three_member_etcd_survives_losing_the_member_in_use(etcd3, coordinator, watches):
    a = await coordinator(etcd3.endpoints, "a")
    b = await coordinator(etcd3.endpoints, "b")
    leader = await a.campaign(me("a"))
    watch = watches(b)
    assert await watch.next() == leader
    victim = next(m for m in etcd3.members if m.client_url == a.endpoint)
    assert b.endpoint == victim.client_url  # the watch goes through the victim too

    victim.kill()
    killed = time.monotonic()
    await until(lambda: refreshed_since(a, killed))
    await until(lambda: refreshed_since(b, killed))
    assert a.endpoint != victim.client_url
    assert await b.members() == [me("a"), me("b")]

    current = await a.leader()
    if current is not None:  # the lease survives unless the raft election outlasted the TTL
        assert current == leader
        assert await a.resign(current.epoch)
    assert await watch.next() is None
    second = await b.campaign(me("b"))
    assert second is not None and second.epoch > leader.epoch
    assert await watch.next() == second
    isr = await b.set_isr(second.epoch, ("a", "b"), 0)
    assert isr is not None and await a.isr() == isr
