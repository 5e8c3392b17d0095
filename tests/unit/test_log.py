"""The log state machine on a real SQLite file: versions, positions, expected versions, idempotency,
deletes, metadata/retention, $all filters and cursors, stream listing, scavenge."""
from __future__ import annotations

import asyncio
import threading
import time
import traceback
import uuid

import pytest

from evstore.node.errors import DuplicateEventId, StreamDeleted, StreamNotFound, Unavailable, WrongExpectedVersion
from evstore.node.log import AllFilter, Log, NewEvent
from evstore.node.storage import Storage
from loghelpers import ev


async def test_versions_and_positions_are_one_based_and_gap_free(log):
    first = await log.append("a", "no_stream", [ev(), ev()])
    second = await log.append("b", "any", [ev()])
    third = await log.append("a", 2, [ev()])
    assert (first.from_version, first.version, first.position) == (1, 2, 2)
    assert (second.from_version, second.version, second.position) == (1, 1, 3)
    assert (third.from_version, third.version, third.position) == (3, 3, 4)
    page = await log.read_all(limit=100)
    assert [r.position for r in page.records] == [1, 2, 3, 4]
    assert [(r.stream, r.version) for r in page.records] == [("a", 1), ("a", 2), ("b", 1), ("a", 3)]


@pytest.mark.parametrize("expected, ok_when_absent, ok_when_present", [
    ("any", True, True), ("no_stream", True, False), ("stream_exists", False, True), (0, True, False),
    (1, False, True), (5, False, False)])
async def test_expected_version_rules(log, expected, ok_when_absent, ok_when_present):
    async def attempt(stream):
        try:
            await log.append(stream, expected, [ev()])
            return True
        except WrongExpectedVersion as exc:
            assert exc.details["currentVersion"] == (1 if stream == "present" else 0)
            return False

    await log.append("present", "no_stream", [ev()])
    assert await attempt("absent") is ok_when_absent
    assert await attempt("present") is ok_when_present


async def test_failed_append_writes_nothing_and_leaves_no_gap(log):
    await log.append("s", "any", [ev()])
    with pytest.raises(WrongExpectedVersion):
        await log.append("s", 7, [ev(), ev()])
    result = await log.append("t", "any", [ev()])
    assert result.position == 2
    assert (await log.read_stream("s", limit=10)).version == 1


async def test_concurrent_appends_in_one_group_commit_keep_order_and_conflicts_isolated(log):
    results = await asyncio.gather(*(log.append("c", i, [ev()]) for i in range(50)), return_exceptions=True)
    # expected versions 0..49 race inside the same batches: all succeed because the queue is ordered
    assert all(not isinstance(r, Exception) for r in results)
    again = await asyncio.gather(log.append("c", 10, [ev()]), log.append("c", 50, [ev()]), return_exceptions=True)
    assert isinstance(again[0], WrongExpectedVersion) and again[1].version == 51
    page = await log.read_all(limit=1000)
    assert [r.position for r in page.records] == list(range(1, 52))


async def test_idempotent_retry_returns_original_reply_whatever_the_expected_version(log):
    events = [ev(data={"n": 1}), ev(data={"n": 2})]
    original = await log.append("i", "no_stream", events)
    await log.append("i", "any", [ev()])
    retry = await log.append("i", "no_stream", events)
    assert retry == original
    assert (await log.read_stream("i", limit=10)).version == 3
    assert log.head == 3


async def test_same_id_with_other_content_is_a_duplicate(log):
    event_id = uuid.uuid4().bytes
    await log.append("d", "any", [ev(data={"a": 1}, event_id=event_id)])
    with pytest.raises(DuplicateEventId):
        await log.append("d", "any", [ev(data={"a": 2}, event_id=event_id)])
    with pytest.raises(DuplicateEventId):
        await log.append("other", "any", [ev(data={"a": 1}, event_id=event_id)])
    with pytest.raises(DuplicateEventId):  # a partial overlap is not a retry
        await log.append("d", "any", [ev(data={"a": 1}, event_id=event_id), ev()])
    assert log.head == 1


async def test_retries_and_reused_ids_in_one_group_commit_with_new_appends(log):
    """An append's lookup of its ids skips the stored records (the id index refuses a stored id when the group
    is written, and the writer then runs the group again with every lookup): answers are the same as with them."""
    kept = [ev(data={"n": 1}), ev(data={"n": 2})]
    original = await log.append("kept", "no_stream", kept)
    other = await log.append("kept-multi", "no_stream", [ev()])
    fresh = [log.append(f"fresh-{i}", "any", [ev(), ev()]) for i in range(30)]
    results = await asyncio.gather(
        *fresh[:10],
        log.append("kept", "no_stream", kept),  # a retry whose expected version no longer holds
        *fresh[10:20],
        log.append("kept", "any", [ev(data={"n": 9}, event_id=kept[0].id)]),  # the same id, other content
        log.append("kept", "any", [kept[0], ev()]),  # a partial overlap
        *fresh[20:],
        return_exceptions=True)
    assert results[10] == original
    assert isinstance(results[21], DuplicateEventId) and isinstance(results[22], DuplicateEventId)
    written = [r for i, r in enumerate(results) if i not in (10, 21, 22)]
    assert all(not isinstance(r, Exception) for r in written), written
    assert sorted(r.position for r in written) == list(range(other.position + 2, other.position + 61, 2))
    assert log.head == other.position + 60
    page = await log.read_all(limit=1000)
    assert len({r.id for r in page.records}) == len(page.records) == log.head


async def test_a_group_run_again_for_a_stored_id_keeps_the_ops_that_used_sql(log):
    """The ops of a group run again after a stored id was found include those that flushed the group's rows to
    run SQL of their own (a snapshot compared with the stored one): each is applied once."""
    snapshot = NewEvent(b"", "State", b'{"n":1}', b"{}", given_id=False)
    kept = [ev()]
    original = await log.append("kept", "any", kept)
    await log.save_snapshot("order-1", 1, snapshot)
    head = log.head
    results = await asyncio.gather(log.append("fresh-a", "any", [ev()]),
                                   log.save_snapshot("order-1", 1, snapshot),  # the same again: found, not written
                                   log.save_snapshot("order-1", 2, snapshot),
                                   log.append("kept", "any", kept),
                                   log.append("fresh-b", "any", [ev()]))
    assert results[3] == original
    assert results[1].version == 1 and results[1].position == head
    assert log.head == head + 3
    page = await log.read_all(limit=1000)
    assert [r.stream for r in page.records][-3:] == ["fresh-a", "$snapshot-order-1", "fresh-b"]


async def test_read_forward_backward_paging(log):
    await log.append("p", "any", [ev(data=i) for i in range(1, 8)])
    page = await log.read_stream("p", limit=3)
    assert [r.version for r in page.records] == [1, 2, 3] and page.next == 4
    page = await log.read_stream("p", start=7, limit=3)
    assert [r.version for r in page.records] == [7] and page.next is None
    page = await log.read_stream("p", limit=3, backward=True)
    assert [r.version for r in page.records] == [7, 6, 5] and page.next == 4
    page = await log.read_stream("p", start=3, limit=3, backward=True)
    assert [r.version for r in page.records] == [3, 2, 1] and page.next is None
    with pytest.raises(StreamNotFound):
        await log.read_stream("nope", limit=3)


async def test_soft_delete_hides_until_appended_and_numbering_continues(log):
    await log.append("sd", "any", [ev(), ev()])
    await log.delete("sd", 2, hard=False)
    with pytest.raises(StreamNotFound):
        await log.read_stream("sd", limit=10)
    assert (await log.stream_info("sd")).deleted == "soft"
    with pytest.raises(StreamNotFound):
        await log.delete("sd", "any", hard=False)
    result = await log.append("sd", "no_stream", [ev()])
    assert result.from_version == 3
    page = await log.read_stream("sd", limit=10)
    assert [r.version for r in page.records] == [3]
    assert (await log.stream_info("sd")).deleted == "no"


async def test_hard_delete_is_forever(log):
    await log.append("hd", "any", [ev()])
    with pytest.raises(WrongExpectedVersion):
        await log.delete("hd", 5, hard=True)
    await log.delete("hd", 1, hard=True)
    for attempt in (log.read_stream("hd", limit=10), log.append("hd", "any", [ev()]),
                    log.delete("hd", "any", hard=False), log.set_metadata("hd", {}), log.get_metadata("hd")):
        with pytest.raises(StreamDeleted):
            await attempt
    assert (await log.stream_info("hd")).deleted == "hard"


async def test_metadata_retention_is_honoured_by_reads(log):
    await log.append("m", "any", [ev(data=i) for i in range(1, 11)])
    await log.set_metadata("m", {"maxCount": 3, "custom": {"owner": "x"}})
    page = await log.read_stream("m", limit=100)
    assert [r.version for r in page.records] == [8, 9, 10]
    await log.set_metadata("m", {"truncateBefore": 10})
    assert [r.version for r in (await log.read_stream("m", limit=100)).records] == [10]
    assert await log.get_metadata("m") == {"truncateBefore": 10}
    await log.set_metadata("m", {"maxAge": 3600})
    assert len((await log.read_stream("m", limit=100)).records) == 10
    meta_stream = await log.read_stream("$$m", limit=100)
    assert [r.type for r in meta_stream.records] == ["$metadata"] * 3


async def test_all_filters_and_cursor_past_scanned_events(log, monkeypatch):
    await log.append("order-1", "any", [ev("OrderPlaced"), ev("OrderShipped")])
    await log.append("user-1", "any", [ev("UserJoined")])
    await log.append("order-2", "any", [ev("OrderPlaced")])
    by_type = await log.read_all(limit=10, filters=AllFilter(types=["OrderPlaced", "UserJoined"]))
    assert [r.position for r in by_type.records] == [1, 3, 4]
    prefix = await log.read_all(limit=10, filters=AllFilter(type_prefix="Order", stream_prefix="order-"))
    assert [r.position for r in prefix.records] == [1, 2, 4]
    glob = await log.read_all(limit=10, filters=AllFilter(stream_pattern="*-2"))
    assert [r.position for r in glob.records] == [4]
    backward = await log.read_all(limit=2, backward=True)
    assert [r.position for r in backward.records] == [4, 3] and backward.next == 2 and backward.head == 4
    monkeypatch.setattr("evstore.node.log.ALL_SCAN_WINDOW", 2)
    indexed = await log.read_all(limit=10, filters=AllFilter(types=["UserJoined"]))  # the type index
    assert [r.position for r in indexed.records] == [3] and indexed.next is None
    scanned = await log.read_all(limit=10, filters=AllFilter(stream_pattern="user-*"))  # no index: a window
    assert scanned.records == [] and scanned.next == 3
    scanned = await log.read_all(start=3, limit=10, filters=AllFilter(stream_pattern="user-*"))
    assert [r.position for r in scanned.records] == [3] and scanned.next is None


async def test_list_streams_pages_in_name_order_with_prefix(log):
    for name in ["b", "a", "c-1", "c-2", "c-3"]:
        await log.append(name, "any", [ev()])
    await log.delete("b", "any", hard=False)
    rows, nxt = await log.list_streams(None, None, 2)
    assert [r.stream for r in rows] == ["a", "c-1"] and nxt == "c-1"
    rows, nxt = await log.list_streams(None, nxt, 2)
    assert [r.stream for r in rows] == ["c-2", "c-3"] and nxt is None
    rows, nxt = await log.list_streams("c-", "c-1", 10)
    assert [r.stream for r in rows] == ["c-2", "c-3"]
    rows, _ = await log.list_streams("$$", None, 10)
    assert [r.stream for r in rows] == ["$$b"]


async def test_scavenge_removes_only_what_retention_hides(log):
    await log.append("x", "any", [ev() for _ in range(5)])
    await log.append("y", "any", [ev()])
    await log.set_metadata("x", {"maxCount": 2})
    assert (await log.scavenge())["removed"] == 3
    assert [r.version for r in (await log.read_stream("x", limit=10)).records] == [4, 5]
    assert (await log.read_stream("y", limit=10)).version == 1


async def test_verify_reports_a_corrupted_record(log):
    await log.append("v", "any", [ev(data="payload-one"), ev(data="payload-two")])
    assert await log.verify() == {"checked": 2, "corrupt": []}
    conn = log.storage._reader_conn()
    conn.execute("PRAGMA query_only=0")
    text = conn.execute("SELECT json FROM events WHERE position = 2").fetchone()[0]
    conn.execute("UPDATE events SET json = ? WHERE position = 2", (text.replace(b'"payload-two"', b'"payload-twp"'),))
    conn.execute("PRAGMA query_only=1")
    assert await log.verify() == {"checked": 2, "corrupt": [2]}


@pytest.fixture
async def metered_log(tmp_path):
    """A log on a fresh SQLite file with the node's metrics; (log, metrics)."""
    from evstore.node.metrics import NodeMetrics

    metrics = NodeMetrics()
    storage = Storage(tmp_path / "metered", metrics=metrics)
    storage.open()
    yield Log(storage, metrics), metrics
    storage.close()


async def test_concurrent_appends_share_group_commits(metered_log):
    log, metrics = metered_log
    await asyncio.gather(*(log.append(f"g-{i}", "any", [ev()]) for i in range(64)))
    commits = metrics.registry.get_sample_value("evstore_group_commit_requests_count")
    requests = metrics.registry.get_sample_value("evstore_group_commit_requests_sum")
    assert requests == 64
    assert commits < 32, f"64 concurrent appends took {commits} commits: no group commit"
    assert metrics.registry.get_sample_value("evstore_sync_latency_seconds_count") == commits


async def test_trimming_with_nothing_to_trim_writes_no_transaction(metered_log):
    # the node trims system streams once a second while the log moves: an idle trim must not count as a
    # request in the group-commit metrics (the benchmark compares them with the requests it sent)
    log, metrics = metered_log
    await log.append("plain", "any", [ev(), ev()])
    assert await log.trim_system_streams() == 0
    assert metrics.registry.get_sample_value("evstore_group_commit_requests_sum") == 1
    assert metrics.registry.get_sample_value("evstore_group_commit_requests_count") == 1


async def test_idempotency_by_id_holds_after_a_scavenge(tmp_path):
    storage = Storage(tmp_path / "sc")
    storage.open()
    events = [ev(data={"n": i}) for i in range(3)]
    try:
        log = Log(storage)
        original = await log.append("sc", "no_stream", events)
        await log.set_metadata("sc", {"maxCount": 1})
        assert (await log.scavenge())["removed"] == 2
        assert await log.append("sc", "no_stream", events) == original  # the retry writes nothing
        assert log.head == 4
    finally:
        storage.close()
    storage = Storage(tmp_path / "sc")  # the ids of scavenged events are kept on disk
    storage.open()
    try:
        log = Log(storage)
        assert await log.append("sc", "any", events) == original
        with pytest.raises(DuplicateEventId):  # a scavenged id with other content
            await log.append("sc", "any", [ev(data={"other": 1}, event_id=events[0].id)])
        with pytest.raises(DuplicateEventId):
            await log.append("elsewhere", "any", [events[0]])
        assert log.head == 4
    finally:
        storage.close()


async def test_truncate_before_past_the_end_is_not_a_delete(log):
    await log.append("tb", "any", [ev(), ev()])
    await log.set_metadata("tb", {"truncateBefore": 10})
    page = await log.read_stream("tb", limit=10)
    assert page.records == [] and page.version == 2 and page.next is None
    info = await log.stream_info("tb")
    assert (info.deleted, info.metadata) == ("no", {"truncateBefore": 10})
    assert [r.stream for r in (await log.list_streams("tb", None, 10))[0]] == ["tb"]
    with pytest.raises(WrongExpectedVersion):
        await log.append("tb", "no_stream", [ev()])
    await log.append("tb", "stream_exists", [ev()])
    await log.delete("tb", "any", hard=False)  # a soft delete still hides the stream
    with pytest.raises(StreamNotFound):
        await log.read_stream("tb", limit=10)
    info = await log.stream_info("tb")
    assert (info.deleted, info.metadata) == ("soft", {"truncateBefore": 4})
    assert await log.get_metadata("tb") == {"truncateBefore": 4}
    with pytest.raises(WrongExpectedVersion):
        await log.append("tb", "stream_exists", [ev()])
    assert (await log.append("tb", "no_stream", [ev()])).from_version == 4


async def test_system_streams_are_trimmed_to_their_max_count_as_of_the_visible_position(log):
    from evstore.node.log import Log
    await log.set_metadata("$sub-a-checkpoint", {"maxCount": 2})
    for n in range(5):
        await log.append("$sub-a-checkpoint", "any", [ev(data={"n": n})])
    await log.append("plain", "any", [ev(), ev(), ev()])
    await log.set_metadata("plain", {"maxCount": 1})  # ordinary streams wait for a scavenge

    async def stored(stream):
        return await log.storage.read(lambda conn: [r[0] for r in conn.execute(
            "SELECT version FROM events WHERE stream = ? ORDER BY version", (stream,))])

    clustered = Log(log.storage, clustered=True)  # the same log on a node that has seen only 4 commit
    clustered.visible.advance(5)  # positions 1..5: the metadata event and checkpoints 1-4
    clustered.committed_position_known()
    assert await clustered.trim_system_streams() == 2
    assert await stored("$sub-a-checkpoint") == [3, 4, 5]
    assert await log.trim_system_streams() == 1
    assert await stored("$sub-a-checkpoint") == [4, 5]
    assert await stored("plain") == [1, 2, 3]
    page = await log.read_stream("$sub-a-checkpoint", limit=10)
    assert [r.version for r in page.records] == [4, 5]


async def test_a_group_commit_runs_again_only_for_an_id_the_log_holds(metered_log):
    """Fresh client-made ids are not looked up in the log and cost no second pass, nor does a retry its expected
    version refuses (it looks its ids up before refusing); a retry that would be written does, once
    (evstore_group_commit_reruns_total). Both get the original reply."""
    log, metrics = metered_log
    reruns = "evstore_group_commit_reruns_total"
    kept = [ev(), ev()]
    original = await log.append("kept", "no_stream", kept)
    await asyncio.gather(*(log.append(f"fresh-{i}", "any", [ev(), ev()]) for i in range(20)))
    assert metrics.registry.get_sample_value(reruns) == 0
    assert await log.append("kept", "no_stream", kept) == original
    assert metrics.registry.get_sample_value(reruns) == 0
    assert await log.append("kept", "any", kept) == original
    assert metrics.registry.get_sample_value(reruns) == 1
    assert log.head == original.position + 40


def broken_op(_txn):
    raise RuntimeError("a bug in an operation")


async def in_one_group_commit(log, writes, *, first=lambda txn: None) -> list[asyncio.Future]:
    """Start `writes` (each a callable returning an awaitable) while a write running `first` holds the writer,
    and release it once all are queued: they then share one group commit. Their futures, in order."""
    holding, release = threading.Event(), threading.Event()

    def hold(txn):
        first(txn)
        holding.set()
        release.wait(10)

    async def until(condition) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)

    held = asyncio.ensure_future(log.storage.write(hold))
    await until(holding.is_set)
    started = [asyncio.ensure_future(write()) for write in writes]
    await until(lambda: log.storage._queue.qsize() == len(writes))
    release.set()
    await held
    return started


async def test_an_operations_own_error_is_logged_once_when_its_group_runs_again(metered_log, caplog):
    """A group commit with a retry that would be written runs twice; an operation of the same group that fails
    by a bug (a 503 for its caller) is logged once, not once per pass."""
    log, metrics = metered_log
    kept = [ev()]
    original = await log.append("kept", "no_stream", kept)
    bug, retry = await in_one_group_commit(log, [lambda: log.storage.write(broken_op),
                                                 lambda: log.append("kept", "any", kept)])
    with pytest.raises(Unavailable):
        await bug
    assert await retry == original
    assert metrics.registry.get_sample_value("evstore_group_commit_reruns_total") == 1
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("write operation failed")]
    assert len(logged) == 1 and "RuntimeError: a bug in an operation" in logged[0]


async def test_an_operations_own_error_is_logged_when_its_group_commit_fails_for_another_reason(log, caplog):
    """A group commit whose rows cannot be written (here: the database may not grow) fails as a whole; a bug of
    one of its operations is still logged, not only the commit's failure."""
    def no_growth(txn):
        pages = txn.conn.execute("PRAGMA page_count").fetchone()[0]
        txn.conn.execute(f"PRAGMA max_page_count={pages}")

    bug, big = await in_one_group_commit(log, [lambda: log.storage.write(broken_op),
                                               lambda: log.append("big", "any", [ev(data={"p": "x" * 100_000})])],
                                         first=no_growth)
    for refused in (bug, big):
        with pytest.raises(Unavailable):
            await refused
    messages = [r.getMessage() for r in caplog.records]
    assert "group commit failed" in messages
    logged = [m for m in messages if m.startswith("write operation failed")]
    assert len(logged) == 1 and "RuntimeError: a bug in an operation" in logged[0]
    await log.storage.write(lambda txn: txn.conn.execute("PRAGMA max_page_count=4294967294"))
    assert (await log.append("big", "any", [ev(data={"p": "x" * 100_000})])).from_version == 1


async def test_a_refusal_carries_no_frame_of_the_writer(log):
    """A refusal (here a wrong expected version) reaches its caller without the writer's frames in its traceback:
    they hold the group commit's outcomes, which hold the refusal, a cycle only a full collection would free."""
    await log.append("refused", "no_stream", [ev()])
    with pytest.raises(WrongExpectedVersion) as refused:
        await log.append("refused", 5, [ev()])
    frames = [frame.f_code.co_name for frame, _line in traceback.walk_tb(refused.value.__traceback__)]
    assert "_run_ops" not in frames and "_run_batch" not in frames
