"""Replication ships a caught-up follower's entries from the writer's recent commits in memory: whatever it
ships from there is exactly what the store would give (every position, every budget), through group commits,
refused ops, metadata, deletes, trims and scavenges."""
from __future__ import annotations

import asyncio

import pytest

from evstore.node.errors import WrongExpectedVersion
from evstore.node.log import Log
from evstore.node.storage import Record, RecentCommits, Storage, records_of_rows, rows_from_store, stored_row
from loghelpers import ev

BUDGETS = (1, 300, 5_000, 1 << 20)


@pytest.fixture
def log(log):
    log.keep_recent_commits(True)  # as a leader does
    return log


async def check_same_as_store(log: Log) -> int:
    """Compare every position the memory holds with the store; the number of positions it held."""
    held = 0
    for first in range(1, log.storage.head + 2):
        for budget in BUDGETS:
            recent = log.storage.recent.rows_from(first, budget)
            if recent is None:
                continue
            held += budget == BUDGETS[0]
            stored = await log.storage.read(rows_from_store, first, budget)
            assert recent == stored, (first, budget)  # every value, the reply texts too
            assert records_of_rows(recent) == records_of_rows(stored)
    return held


async def test_the_tail_is_served_from_memory_exactly_as_the_store_holds_it(log):
    # group commits of several appends, one of them refused (its events never written)
    async def refused():
        with pytest.raises(WrongExpectedVersion):
            await log.append("s-0", 99, [ev()])

    await asyncio.gather(*(log.append(f"s-{i % 3}", "any", [ev(data={"i": i, "pad": "x" * (i * 37)})
                                                            for _ in range(1 + i % 4)]) for i in range(12)),
                         refused())
    assert await check_same_as_store(log) == log.storage.head  # every position is in memory
    assert records_of_rows(log.storage.recent.rows_from(log.storage.head, 1))[0].position == log.storage.head

    await log.set_metadata("s-1", {"maxCount": 2})
    await log.delete("s-2", "any", hard=False)
    await log.append("s-0", "any", [ev(), ev()])
    assert await check_same_as_store(log) == log.storage.head


async def test_removing_records_empties_it_and_later_commits_start_it_again(log):
    for i in range(5):
        await log.append("trimmed", "any", [ev(data={"i": i})])
    await log.set_metadata("trimmed", {"maxCount": 2})
    assert (await log.scavenge())["removed"] == 3
    head = log.storage.head
    assert log.storage.recent.rows_from(1, 1 << 20) is None  # what is left is read from the store
    assert [r.version for r in records_of_rows(await log.rows_from(1))] == [4, 5, 1]

    await log.append("after", "any", [ev(), ev()])
    assert log.storage.recent.rows_from(head + 1, 1 << 20) is not None
    assert log.storage.recent.rows_from(head, 1 << 20) is None  # never across the removal
    assert await check_same_as_store(log) == 2


async def test_trimming_a_system_stream_empties_it(log):
    await log.set_metadata("$checkpoints-x", {"maxCount": 1})
    for i in range(3):
        await log.append("$checkpoints-x", "any", [ev(data={"i": i})])
    assert await log.trim_system_streams() == 2
    assert log.storage.recent.rows_from(log.storage.head, 1 << 20) is None
    assert await check_same_as_store(log) == 0


async def test_shipped_records_are_copies(log):
    await log.append("a", "any", [ev(data={"n": 1})])
    shipped = records_of_rows(await log.rows_from(1))
    shipped[0].data = b'{"n":666}'
    assert records_of_rows(await log.rows_from(1))[0].data == b'{"n":1}'


async def test_replicated_and_truncated_entries_are_read_from_the_store(tmp_path, log):
    for i in range(4):
        await log.append("a", "any", [ev(data={"i": i})])
    storage = Storage(tmp_path / "follower")
    storage.open()
    try:
        follower = Log(storage)
        follower.keep_recent_commits(True)  # a follower that led before
        await follower.apply_replicated_rows(await log.rows_from(1), committed=2)
        assert storage.recent.rows_from(1, 1 << 20) is None
        await follower.truncate_after(2)
        assert storage.recent.rows_from(1, 1 << 20) is None
        assert [r.position for r in records_of_rows(await follower.rows_from(1))] == [1, 2]
    finally:
        storage.close()


async def test_a_node_that_does_not_lead_keeps_nothing(tmp_path):
    storage = Storage(tmp_path / "single")
    storage.open()
    try:
        single = Log(storage)
        await single.append("a", "any", [ev()])
        assert storage.recent.rows_from(1, 1 << 20) is None
        assert [r.position for r in records_of_rows(await single.rows_from(1))] == [1]
    finally:
        storage.close()


def test_it_keeps_only_the_latest_commits_within_its_bounds():
    recent = RecentCommits(max_bytes=10_000, max_commits=3, on=True)

    def commit(first: int, count: int) -> list[list]:
        values = []
        for position in range(first, first + count):
            values += stored_row(Record(position, "s", position, bytes(16), "T", b"{}", b"{}", 7, 1))
        return [values]

    for n in range(5):
        recent.add(commit(1 + 2 * n, 2), 2 + 2 * n)
    assert recent.rows_from(4, 1) is None  # the two oldest commits were let go
    assert [r.position for r in records_of_rows(recent.rows_from(5, 1))] == [5, 6]
    assert [r.position for r in records_of_rows(recent.rows_from(6, 1))] == [6]
    assert [r.position for r in records_of_rows(recent.rows_from(8, 1 << 20))] == [8, 9, 10]
    recent.add(commit(20, 1), 20)  # not after the head it holds: it starts again from there
    assert recent.rows_from(10, 1) is None
    assert [r.position for r in records_of_rows(recent.rows_from(20, 1))] == [20]
