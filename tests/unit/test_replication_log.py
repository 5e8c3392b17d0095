"""The log's replication side on real SQLite files: whole group commits shipped, records applied verbatim
with the stream state rebuilt, epochs tracked, and an uncommitted tail truncated."""
from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from evstore.node.cluster.wire import WireError, decode, decode_records, encode, encode_records
from evstore.node.errors import CorruptRecord, LogError, StreamDeleted, StreamNotFound, Unavailable
from evstore.node.log import AllFilter, Log, NewEvent
from evstore.node.storage import Storage, records_of_rows, rows_from_store, rows_of_records


def ev(n: int = 0, event_type: str = "Happened") -> NewEvent:
    return NewEvent(uuid.uuid4().bytes, event_type, orjson.dumps({"n": n}), b"{}")


@pytest.fixture
async def pair(tmp_path):
    """A leader's log and a follower's log, each on its own SQLite file."""
    logs = []
    for name in ("leader", "follower"):
        storage = Storage(tmp_path / name)
        storage.open()
        logs.append(Log(storage))
    yield logs
    for one in logs:
        one.storage.close()


def clustered_view(log: Log, visible: int) -> Log:
    """The same storage as a clustered node whose visible (committed) position is `visible`."""
    view = Log(log.storage, clustered=True)
    view.visible.advance(visible)
    view.committed_position_known()
    return view


async def replicate(leader: Log, follower: Log, *, as_rows: bool = True) -> None:
    """Ship as the fetch does: wire format 3 (stored rows), or formats 1 and 2 (a follower of the last release)."""
    while follower.head < leader.head:
        rows = await leader.rows_from(follower.head + 1, max_bytes=1)
        await follower.apply_replicated_rows(decode(encode(rows, as_rows=as_rows)))


async def stored_rows(one: Log) -> list:
    return await one.storage.read(rows_from_store, 1, 1 << 30)


async def dump(one: Log) -> list[tuple]:
    page = await one.read_all(limit=4096)
    return [(r.position, r.stream, r.version, r.id, r.type, r.data, r.created, r.epoch, r.checksum)
            for r in page.records]


@pytest.mark.parametrize("as_rows", [True, False], ids=["format-3", "formats-1-2"])
async def test_a_follower_becomes_an_exact_copy(pair, as_rows):
    leader, follower = pair
    leader.storage.epoch = 7
    await asyncio.gather(*(leader.append(f"s{i % 3}", "any", [ev(i), ev(i)]) for i in range(20)))
    await leader.set_metadata("s1", {"maxCount": 3})
    await leader.delete("s2", "any", hard=True)
    await replicate(leader, follower, as_rows=as_rows)
    assert await dump(follower) == await dump(leader)
    assert await stored_rows(follower) == await stored_rows(leader)  # byte for byte, the reply texts too
    assert follower.storage.epochs == leader.storage.epochs == [(7, 1)]
    assert [r.version for r in (await follower.read_stream("s1", limit=100)).records] == [12, 13, 14]
    with pytest.raises(StreamDeleted):
        await follower.read_stream("s2", limit=10)
    assert (await follower.stream_info("s0")).version == (await leader.stream_info("s0")).version


async def test_records_are_shipped_in_whole_group_commits(pair):
    leader, _ = pair
    # one append of 50 events is one commit: even a 1-byte budget ships all of it
    await leader.append("big", "any", [ev(i) for i in range(50)])
    await leader.append("small", "any", [ev()])
    first = records_of_rows(await leader.rows_from(1, max_bytes=1))
    assert [r.position for r in first] == list(range(1, 51))
    assert [r.position for r in records_of_rows(await leader.rows_from(51, max_bytes=1))] == [51]


async def test_a_corrupted_record_is_refused(pair):
    leader, follower = pair
    await leader.append("a", "any", [ev()])
    records = records_of_rows(await leader.rows_from(1))
    records[0].data = b'{"n":666}'
    with pytest.raises(CorruptRecord):
        await follower.apply_replicated_rows(rows_of_records(records))
    assert follower.head == 0


async def test_records_must_follow_the_head(pair):
    leader, follower = pair
    await leader.append("a", "any", [ev(), ev()])
    await replicate(leader, follower)
    with pytest.raises(LogError):
        await follower.apply_replicated_rows(await leader.rows_from(2))
    assert follower.head == 2


def test_a_malformed_payload_is_a_wire_error():
    with pytest.raises(WireError):
        decode_records(b"\x01\x02\x03")


async def test_truncating_an_uncommitted_tail_restores_the_streams(pair):
    leader, follower = pair
    leader.storage.epoch = 3
    await leader.append("a", "any", [ev(1), ev(2)])
    await leader.set_metadata("a", {"custom": {"k": 1}})
    await replicate(leader, follower)
    committed = follower.head
    leader.storage.epoch = 5  # a leader's uncommitted writes of a later epoch, then a hard delete
    await leader.append("a", "any", [ev(3)])
    await leader.append("b", "any", [ev(4)])
    await leader.set_metadata("a", {"maxCount": 1})
    await leader.delete("b", "any", hard=True)
    await replicate(leader, follower)
    assert follower.storage.end_of_epoch(4) == (3, committed)
    assert follower.storage.epoch_at(follower.head) == 5

    await follower.truncate_after(committed)
    assert follower.head == committed
    assert follower.storage.epochs == [(3, 1)]
    page = await follower.read_stream("a", limit=10)
    assert (page.version, [r.version for r in page.records]) == (2, [1, 2])
    assert (await follower.get_metadata("a")) == {"custom": {"k": 1}}
    with pytest.raises(StreamNotFound):
        await follower.read_stream("b", limit=10)
    # the follower appends again from there, as the new leader would have it
    follower.storage.epoch = 6
    result = await follower.append("a", 2, [ev(5)])
    assert (result.version, result.position) == (3, committed + 1)
    assert follower.storage.epochs == [(3, 1), (6, committed + 1)]


async def test_reads_stop_at_the_horizon(pair):
    leader, _ = pair
    await leader.append("a", "any", [ev(1), ev(2)])
    await leader.append("a", "any", [ev(3)])
    view = clustered_view(leader, 2)
    page = await view.read_stream("a", limit=10)
    assert (page.version, [r.version for r in page.records]) == (2, [1, 2])
    assert [r.position for r in (await view.read_all(limit=10)).records] == [1, 2]
    assert (await view.read_all(limit=10)).head == 2
    with pytest.raises(StreamNotFound):
        await clustered_view(leader, 0).read_stream("a", limit=10)


async def test_epochs_and_promises_survive_a_restart(tmp_path):
    storage = Storage(tmp_path / "n")
    storage.open()
    one = Log(storage)
    storage.epoch = 4
    await one.append("a", "any", [ev()])
    storage.epoch = 9
    await one.append("a", "any", [ev()])
    await one.promise_epoch(12)
    storage.close()
    again = Storage(tmp_path / "n")
    again.open()
    try:
        assert again.epochs == [(4, 1), (9, 2)]
        assert again.epoch == 9 and again.promised_epoch == 12
        assert again.epoch_at(1) == 4 and again.epoch_at(2) == 9 and again.epoch_at(0) == 0
        assert again.end_of_epoch(8) == (4, 1) and again.end_of_epoch(3) == (0, 0)
    finally:
        again.close()


async def test_stream_state_past_the_horizon_is_not_shown(pair):
    leader, _ = pair
    await leader.append("a", "any", [ev(1)])
    await leader.set_metadata("a", {"custom": {"v": 1}})
    committed = leader.head
    await leader.append("a", "any", [ev(2, "Late")])
    await leader.set_metadata("a", {"custom": {"v": 2}})
    await leader.append("new", "any", [ev(3, "Late")])
    await leader.delete("a", "any", hard=True)
    leader = clustered_view(leader, committed)
    info = await leader.stream_info("a")
    assert (info.version, info.deleted, info.metadata) == (1, "no", {"custom": {"v": 1}})
    assert await leader.get_metadata("a") == {"custom": {"v": 1}}
    assert [r.version for r in (await leader.read_stream("a", limit=10)).records] == [1]
    with pytest.raises(StreamNotFound):
        await leader.stream_info("new")
    rows, _ = await leader.list_streams(None, None, 10)
    assert [(r.stream, r.version) for r in rows] == [("a", 1)]
    filtered = await leader.read_all(limit=10, filters=AllFilter(types=["Late"]))
    assert filtered.records == [] and filtered.head == committed


async def test_the_committed_position_survives_a_restart_and_is_never_truncated(tmp_path):
    storage = Storage(tmp_path / "n")
    storage.open()
    one = Log(storage)
    await one.append("a", "any", [ev(1), ev(2), ev(3)])
    await one.persist_committed(2)
    storage.close()
    again = Storage(tmp_path / "n")
    again.open()
    try:
        assert again.committed == 2
        with pytest.raises(Unavailable):
            await Log(again).truncate_after(1)
        assert again.head == 3
        await Log(again).truncate_after(2)
        assert again.head == 2
    finally:
        again.close()


async def test_binary_payloads_and_their_content_types_replicate(pair):
    from evstore.node.storage import DATA_BINARY, METADATA_BINARY

    leader, follower = pair
    exact = b'{"n": 18446744073709551617}'
    await leader.append("b", "any", [NewEvent(uuid.uuid4().bytes, "Bin", b"\x00\xff", b"\x01",
                                              flags=DATA_BINARY | METADATA_BINARY),
                                     NewEvent(uuid.uuid4().bytes, "Json", exact, b"{}")])
    await replicate(leader, follower)
    copied = (await follower.read_all(limit=10)).records
    assert [(r.data, r.metadata, r.flags) for r in copied] == [
        (b"\x00\xff", b"\x01", DATA_BINARY | METADATA_BINARY), (exact, b"{}", 0)]
    shipped = decode_records(encode_records(copied))
    shipped[0].flags = 0  # a content type changed in transit is caught by the checksum
    with pytest.raises(CorruptRecord):
        await follower.apply_replicated_rows(rows_of_records(shipped[:1]))


async def test_a_restarted_clustered_node_shows_nothing_until_it_knows_the_commit_point(pair, monkeypatch):
    """It persists its commit point only now and then, so what it persisted may be below what it showed."""
    import evstore.node.log as log_module
    from evstore.node.errors import Unavailable
    leader, _ = pair
    await leader.append("a", "any", [ev(1), ev(2), ev(3)])
    await leader.persist_committed(1)  # it showed 3, persisted 1, then crashed
    restarted = Log(leader.storage, clustered=True)
    monkeypatch.setattr(log_module, "COMMITTED_POSITION_WAIT", 0.05)
    with pytest.raises(Unavailable) as unknown:
        await restarted.read_stream("a", limit=10)
    assert unknown.value.details["reason"] == "commit_point_unknown"
    with pytest.raises(Unavailable):
        await restarted.read_all(limit=10)
    restarted.visible.advance(3)  # its first fetch from the leader tells it the commit point
    restarted.committed_position_known()
    assert (await restarted.read_stream("a", limit=10)).version == 3
