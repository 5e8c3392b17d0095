"""The writer's write-behind buffer on a real SQLite file: ops of one group commit see each other's buffered
writes, a failed op is undone in the buffers (or back to its savepoint) without touching the others, and SQL
of an op's own sees everything written before it."""
from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from evstore.node.errors import DuplicateEventId, LogError, Unavailable, WrongExpectedVersion
from evstore.node.log import Log, NewEvent
from evstore.node.storage import Storage, WriteTxn
from evstore.node.storage.statements import row_chunks
from loghelpers import ev

WAIT = 10.0


async def one_group_commit(log: Log, *calls):
    """Run the coroutines made by `calls` in one group commit: a first op holds the writer until they are all
    queued behind it, so the writer takes them as one batch."""
    release, running = threading.Event(), threading.Event()

    def hold(_txn: WriteTxn) -> None:
        running.set()
        assert release.wait(WAIT), "the test never released the writer"

    holder = asyncio.ensure_future(log.storage.write(hold))
    assert await asyncio.to_thread(running.wait, WAIT)
    tasks = []
    for call in calls:
        tasks.append(asyncio.ensure_future(call()))
        await asyncio.sleep(0)  # let the task reach the writer's queue, in this order
    while log.storage._queue.qsize() < len(calls):
        await asyncio.sleep(0)
    commits_before = _commits(log)
    release.set()
    await asyncio.wait_for(holder, WAIT)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)
    assert _commits(log) - commits_before == 1, "the calls did not share one group commit"
    return results


def _commits(log: Log) -> int:
    return getattr(log.storage, "_test_commits", 0)


@pytest.fixture(autouse=True)
def count_commits(monkeypatch):
    original = Storage._run_batch

    def counting(self, conn, batch):
        self._test_commits = getattr(self, "_test_commits", 0) + 1
        return original(self, conn, batch)

    monkeypatch.setattr(Storage, "_run_batch", counting)


async def stream_versions(log: Log, stream: str) -> list[tuple[int, int]]:
    page = await log.read_stream(stream, limit=100)
    return [(r.version, r.position) for r in page.records]


async def test_appends_in_one_commit_see_each_others_stream_versions(log):
    first, conflict, second = await one_group_commit(
        log,
        lambda: log.append("s", "no_stream", [ev(), ev()]),
        lambda: log.append("s", "no_stream", [ev()]),  # the stream exists by now, though not yet on disk
        lambda: log.append("s", 2, [ev()]))
    assert (first.version, first.position) == (2, 2)
    assert isinstance(conflict, WrongExpectedVersion) and conflict.details["currentVersion"] == 2
    assert (second.from_version, second.version, second.position) == (3, 3, 3)
    assert await stream_versions(log, "s") == [(1, 1), (2, 2), (3, 3)]
    info = await log.stream_info("s")
    assert info.version == 3


async def test_a_retry_in_the_same_commit_is_answered_from_the_buffer(log):
    event_id = uuid.uuid4().bytes
    original, retry, reused = await one_group_commit(
        log,
        lambda: log.append("s", "any", [ev(data={"n": 1}, event_id=event_id)]),
        lambda: log.append("s", "no_stream", [ev(data={"n": 1}, event_id=event_id)]),
        lambda: log.append("t", "any", [ev(data={"n": 2}, event_id=event_id)]))
    assert (retry.stream, retry.version, retry.position) == (original.stream, original.version, original.position)
    assert isinstance(reused, DuplicateEventId)
    page = await log.read_all(limit=100)
    assert [(r.stream, r.version) for r in page.records] == [("s", 1)]


async def test_a_failed_op_leaves_no_trace_and_later_ops_fill_its_place(log):
    await log.append("s", "any", [ev()])

    def buffers_then_fails(txn: WriteTxn) -> None:
        row = txn.stream_row("s")
        row.version += 5
        txn.save_stream_row(row)
        txn.insert("s", txn.allocate_positions(1), 7, [_sealed(ev(), "s")])
        raise LogError("the op changed its mind")

    ok_before, failed, ok_after = await one_group_commit(
        log,
        lambda: log.append("other", "any", [ev()]),
        lambda: log.storage.write(buffers_then_fails),
        lambda: log.append("s", 1, [ev()]))
    assert isinstance(failed, LogError)
    assert ok_before.position == 2
    assert (ok_after.version, ok_after.position) == (2, 3)  # the failed op's position and version are reused
    assert await stream_versions(log, "s") == [(1, 1), (2, 3)]
    assert log.storage.head == 3


async def test_sql_of_an_op_sees_the_buffered_writes_before_it_and_its_failure_undoes_only_itself(log):
    seen = {}

    def counts_then_fails(txn: WriteTxn) -> None:
        seen["events"] = txn.conn.execute("SELECT count(*) FROM events").fetchone()[0]
        seen["streams"] = txn.conn.execute("SELECT count(*) FROM streams").fetchone()[0]
        txn.set_setting("probe", "written")
        row = txn.stream_row("a")
        row.version = 99
        txn.save_stream_row(row)
        raise LogError("undo me")

    first, failed, second = await one_group_commit(
        log,
        lambda: log.append("a", "any", [ev(), ev()]),
        lambda: log.storage.write(counts_then_fails),
        lambda: log.append("a", 2, [ev()]))
    assert seen == {"events": 2, "streams": 1}
    assert isinstance(failed, LogError)
    assert (first.version, second.version, second.position) == (2, 3, 3)
    assert await stream_versions(log, "a") == [(1, 1), (2, 2), (3, 3)]

    def read_probe(conn):
        return conn.execute("SELECT value FROM settings WHERE key = 'probe'").fetchone()

    assert await log.storage.read(read_probe) is None


async def test_sql_after_buffered_writes_in_one_op_is_refused(log):
    def buffers_then_uses_sql(txn: WriteTxn) -> None:
        txn.insert("s", txn.allocate_positions(1), 1, [_sealed(ev(), "s")])
        txn.conn.execute("SELECT 1")

    with pytest.raises(Unavailable):
        await log.storage.write(buffers_then_uses_sql)
    result = await log.append("s", "no_stream", [ev()])
    assert (result.version, result.position) == (1, 1)


@pytest.mark.parametrize("count", [0, 1, 2, 31, 32, 33, 100, 511, 512, 513, 1500, 3100])
def test_row_chunks_cover_every_count_with_few_statement_shapes(count):
    chunks = list(row_chunks(count))
    assert sum(rows for _offset, rows in chunks) == count
    assert [offset for offset, _rows in chunks] == [sum(r for _o, r in chunks[:i]) for i in range(len(chunks))]
    assert all(rows in {1 << k for k in range(10)} for _offset, rows in chunks)


async def test_a_large_commit_is_stored_whole(log):
    results = await one_group_commit(log, *[
        (lambda i=i: log.append(f"s{i % 7}", "any", [ev(data={"i": i, "k": k}) for k in range(97)]))
        for i in range(40)])
    assert not [r for r in results if isinstance(r, BaseException)]
    page = await log.read_all(limit=5000)
    assert [r.position for r in page.records] == list(range(1, 40 * 97 + 1))
    for s in range(7):
        versions = [v for v, _p in await stream_versions_all(log, f"s{s}")]
        assert versions == list(range(1, len(versions) + 1))


async def stream_versions_all(log: Log, stream: str) -> list[tuple[int, int]]:
    out, start = [], None
    while True:
        page = await log.read_stream(stream, start=start, limit=1000)
        out.extend((r.version, r.position) for r in page.records)
        if page.next is None:
            return out
        start = page.next


def _sealed(event: NewEvent, stream: str) -> NewEvent:
    from evstore.node.storage import seal_payloads
    seal_payloads(stream, [event])
    return event


async def test_an_insert_failing_midway_leaves_no_buffered_id_behind(log):
    good, bad = _sealed(ev(), "s"), _sealed(ev(), "s")
    bad.head = None  # the writer cannot build its text: the op fails after buffering `good`

    def half_insert(txn: WriteTxn) -> None:
        txn.insert("s", txn.allocate_positions(2), 1, [good, bad])

    failed, retried = await one_group_commit(
        log,
        lambda: log.storage.write(half_insert),
        lambda: log.append("s", "no_stream", [ev(event_id=bad.id)]))
    assert isinstance(failed, Unavailable)
    assert (retried.version, retried.position) == (1, 1)
