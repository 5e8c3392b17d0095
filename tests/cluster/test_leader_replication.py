"""The leader's side of replication in one process, with a real etcd and a real SQLite log: a write is
acknowledged only once every ISR member has it; a fetch of another epoch is refused; a diverging follower is
told where to truncate; a leader whose lease is not renewed stops writing at once."""
from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from evstore.node.cluster.coordinator import MemberInfo
from evstore.node.cluster.auth import LeaderRecords
from evstore.node.cluster.etcd import EtcdCoordinator
from evstore.node.cluster import replication
from evstore.node.cluster.replication import EpochMismatch, LeaderReplication, Timing
from evstore.node.errors import NotLeader
from evstore.node.log import Log, NewEvent
from evstore.node.storage import Storage, records_of_rows

WAIT = 15.0
LEADER = MemberInfo("leader", "http://127.0.0.1:1")


def ev() -> NewEvent:
    return NewEvent(uuid.uuid4().bytes, "T", orjson.dumps({}), b"{}")


@pytest.fixture
async def leading(etcd, tmp_path):
    """This process leads a store whose ISR is {leader, follower}, with a real etcd and log."""
    storage = Storage(tmp_path / "leader")
    storage.open()
    log = Log(storage, clustered=True)
    store = f"t-{uuid.uuid4().hex[:8]}"
    coordinator = EtcdCoordinator((etcd.client_url,), store, lease_ttl=2,
                                  leader_records=LeaderRecords("replication-test-secret", store))
    await coordinator.start(LEADER)
    await asyncio.wait_for(coordinator.wait_registered(), WAIT)
    won = await coordinator.campaign(LEADER)
    isr = await coordinator.isr()
    state = await coordinator.set_isr(won.epoch, ("follower", "leader"), isr.revision)
    storage.epoch = won.epoch
    lead = LeaderReplication(log, coordinator, LEADER, won.epoch, state, lambda: 2, Timing(2), committed=0)
    log.use_write_gate(lead)
    lead.start()
    try:
        yield lead
    finally:
        await lead.stop("test over")
        await coordinator.close()
        storage.close()


async def test_a_write_waits_for_every_isr_member(leading):
    lead, log = leading, leading.log
    first_fetch = asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 1, 0))
    append = asyncio.create_task(log.append("s", "any", [ev(), ev()]))
    shipped = await asyncio.wait_for(first_fetch, WAIT)  # answered with the new entries
    assert [r.position for r in records_of_rows(shipped.rows)] == [1, 2]
    assert not append.done() and lead.committed_position == 0  # durable here, but not yet on the follower
    # the follower stored them: its next fetch says so, and the write is acknowledged
    asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 3, lead.epoch))
    result = await asyncio.wait_for(append, WAIT)
    assert (result.version, result.position, lead.committed_position) == (2, 2, 2)



async def test_a_new_commit_point_travels_with_the_next_entry(leading, monkeypatch):
    """The reply to the fetch that acknowledges a write would carry only the new commit point: it waits (up to
    NEWS_DELAY) for the next entry and carries both, one exchange per write instead of two."""
    monkeypatch.setattr(replication, "NEWS_DELAY", WAIT)  # only the next entry can end the wait here
    lead, log = leading, leading.log
    fetch = asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 1, 0))
    first = asyncio.create_task(log.append("s", "any", [ev()]))
    await asyncio.wait_for(fetch, WAIT)
    report = asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 2, lead.epoch))
    await asyncio.wait_for(first, WAIT)  # acknowledged by the report
    assert lead.committed_position == 1 and not report.done()
    second = asyncio.create_task(log.append("s", "any", [ev()]))
    reply = await asyncio.wait_for(report, WAIT)
    assert [r.position for r in records_of_rows(reply.rows)] == [2] and reply.committed == 1
    asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 3, lead.epoch))  # the follower stored it
    assert (await asyncio.wait_for(second, WAIT)).position == 2



async def test_a_follower_that_awaits_the_commit_point_is_told_it_at_once(leading, monkeypatch):
    """A follower with a forwarded write's reply, a read or a subscription waiting for the commit point says so
    (`eager`): the news is not held for a next entry."""
    monkeypatch.setattr(replication, "NEWS_DELAY", WAIT)
    lead, log = leading, leading.log
    fetch = asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 1, 0))
    append = asyncio.create_task(log.append("s", "any", [ev()]))
    await asyncio.wait_for(fetch, WAIT)
    reply = await asyncio.wait_for(lead.fetch("follower", "http://f", lead.epoch, 2, lead.epoch, eager=True), WAIT)
    await asyncio.wait_for(append, WAIT)
    assert reply.rows == [] and reply.committed == 1

async def test_a_new_commit_point_alone_is_told_soon(leading):
    lead, log = leading, leading.log
    fetch = asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 1, 0))
    append = asyncio.create_task(log.append("s", "any", [ev()]))
    await asyncio.wait_for(fetch, WAIT)
    reply = await asyncio.wait_for(lead.fetch("follower", "http://f", lead.epoch, 2, lead.epoch), WAIT)
    await asyncio.wait_for(append, WAIT)
    assert reply.rows == [] and reply.committed == 1

async def test_a_fetch_of_another_epoch_is_refused(leading):
    with pytest.raises(EpochMismatch) as older:
        await leading.fetch("follower", "http://f", leading.epoch - 1, 1, 0)
    assert older.value.leader_epoch == leading.epoch and not older.value.stale_leader
    with pytest.raises(EpochMismatch) as newer:
        await leading.fetch("follower", "http://f", leading.epoch + 1, 1, 0)
    assert newer.value.stale_leader  # the follower knows a newer leader: this one is deposed


async def test_a_diverging_follower_is_told_where_to_truncate(leading):
    lead, log = leading, leading.log
    fetch = asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 1, 0))
    append = asyncio.create_task(log.append("s", "any", [ev()]))
    await asyncio.wait_for(fetch, WAIT)
    await asyncio.wait_for(lead.fetch("follower", "http://f", lead.epoch, 2, lead.epoch), WAIT)
    await asyncio.wait_for(append, WAIT)
    # a follower holding 3 entries of an older epoch: the leader has only position 1, of its own epoch
    reply = await lead.fetch("follower", "http://f", lead.epoch, 4, lead.epoch - 1)
    assert (reply.status, reply.epoch, reply.end) == ("diverged", 0, 0)
    # one whose position 1 matches but that holds more than the leader
    reply = await lead.fetch("follower", "http://f", lead.epoch, 4, lead.epoch)
    assert (reply.status, reply.epoch, reply.end) == ("diverged", lead.epoch, 1)


async def test_a_leader_that_cannot_renew_its_lease_stops_writing(leading):
    lead, log = leading, leading.log
    lead.coordinator._keepalive_task.cancel()  # as if the process froze: nothing renews the lease

    async def lease_runs_out():
        while lead.lease_valid():
            await asyncio.sleep(0.05)  # the lease runs out with the clock: there is no event to await

    await asyncio.wait_for(lease_runs_out(), WAIT)
    with pytest.raises(NotLeader):
        await log.append("s", "any", [ev()])
    assert log.head == 0  # refused before anything was written


async def _refused_and_waiting(lead, refusal: asyncio.Task) -> None:
    """Until the refused write waits for the state it read to commit (its op ran; the reply is held)."""
    while len(lead._wakeups) < 2 and not refusal.done():
        await asyncio.sleep(0.01)  # the writer thread runs the op: no event reaches the test from there


async def test_a_409_waits_until_the_version_it_names_is_committed(leading):
    from evstore.node.errors import WrongExpectedVersion
    lead, log = leading, leading.log
    fetch = asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 1, 0))
    first = asyncio.create_task(log.append("s", "no_stream", [ev()]))
    await asyncio.wait_for(fetch, WAIT)  # durable on the leader, not yet on the follower
    refusal = asyncio.create_task(log.append("s", "no_stream", [ev()]))
    await asyncio.wait_for(_refused_and_waiting(lead, refusal), WAIT)
    assert not refusal.done() and not first.done()  # version 1 is not committed: no 409 names it yet
    asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 2, lead.epoch))
    assert (await asyncio.wait_for(first, WAIT)).version == 1
    with pytest.raises(WrongExpectedVersion) as refused:
        await asyncio.wait_for(refusal, WAIT)
    assert refused.value.details["currentVersion"] == 1


async def test_a_leader_deposed_before_its_state_committed_answers_503_not_409(leading):
    from evstore.node.errors import Unavailable, WrongExpectedVersion
    lead, log = leading, leading.log
    fetch = asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 1, 0))
    first = asyncio.create_task(log.append("s", "no_stream", [ev()]))
    await asyncio.wait_for(fetch, WAIT)
    refusal = asyncio.create_task(log.append("s", "no_stream", [ev()]))
    await asyncio.wait_for(_refused_and_waiting(lead, refusal), WAIT)
    await lead.stop("deposed in the test")
    for task in (first, refusal):
        with pytest.raises(Unavailable) as answer:
            await asyncio.wait_for(task, WAIT)
        assert not isinstance(answer.value, WrongExpectedVersion)


async def test_a_new_leader_serves_reads_only_once_all_it_took_over_is_committed(etcd, tmp_path):
    """It may have entries the old leader acknowledged while it heard an older commit point: Raft's rule."""
    storage = Storage(tmp_path / "new-leader")
    storage.open()
    await Log(storage).append("s", "any", [ev(), ev()])  # written under the old leader, commit point not heard
    log = Log(storage, clustered=True)
    store = f"t-{uuid.uuid4().hex[:8]}"
    coordinator = EtcdCoordinator((etcd.client_url,), store, lease_ttl=2,
                                  leader_records=LeaderRecords("replication-test-secret", store))
    await coordinator.start(LEADER)
    await asyncio.wait_for(coordinator.wait_registered(), WAIT)
    won = await coordinator.campaign(LEADER)
    isr = await coordinator.isr()
    state = await coordinator.set_isr(won.epoch, ("follower", "leader"), isr.revision)
    lead = LeaderReplication(log, coordinator, LEADER, won.epoch, state, lambda: 2, Timing(2), committed=0)
    log.use_write_gate(lead)
    lead.start()
    try:
        assert not await lead.serving(0.05)
        reads = asyncio.create_task(log.read_all(limit=10))
        await asyncio.wait_for(lead.fetch("follower", "http://f", lead.epoch, 3, storage.epoch_at(2)), WAIT)
        assert await lead.serving(WAIT)
        page = await asyncio.wait_for(reads, WAIT)  # held until then: it shows both entries
        assert [r.position for r in page.records] == [1, 2]
    finally:
        await lead.stop("test over")
        await coordinator.close()
        storage.close()


async def test_a_new_leader_with_nothing_to_commit_serves_reads_once_its_isr_fetched(leading):
    """A fresh store (or one whose whole log was committed before): the commit point does not move, yet
    everything the leader took over is committed, so reads must not wait for a first write."""
    lead, log = leading, leading.log
    await asyncio.wait_for(lead.fetch("follower", "http://f", lead.epoch, 1, 0), WAIT)
    assert await lead.serving(WAIT)
    page = await asyncio.wait_for(log.read_all(limit=10), WAIT)
    assert page.records == [] and page.head == 0
