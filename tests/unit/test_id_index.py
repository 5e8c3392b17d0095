"""The event-id index (node/storage/ids.py): the newest ids in the writer's in-memory window, the rest merged into
`event_ids` in key order. Idempotency and duplicate refusals must not depend on which part holds an id: these tests
make the window tiny so that ids are merged, a slice at a time, while appends go on."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid

import pytest

from evstore.ids import uuid7_bytes
from evstore.node.errors import DuplicateEventId
from evstore.node.log import Log, NewEvent
from evstore.node.storage import Storage
from evstore.node.storage import idfilter
from evstore.node.storage import ids as storage_ids
from evstore.node.storage import threads as storage_threads
from evstore.node.storage import wal as storage_wal
from loghelpers import ev


@pytest.fixture
def tiny_window(monkeypatch):
    monkeypatch.setattr(storage_ids, "WINDOW_MERGE_ROWS", 8)
    monkeypatch.setattr(storage_ids, "MERGE_SLICE_ROWS", 3)


def id_runs(conn) -> dict:
    """What the settings hold of the runs of random ids: {"runs": [[table, level, rows], ...] oldest first,
    "merge": the merge in progress or None}."""
    state = conn.execute("SELECT value FROM settings WHERE key = 'id_runs'").fetchone()
    return json.loads(state[0]) if state else {"runs": [], "merge": None}


def run_tables(conn) -> list[str]:
    return [table for table, _level, _rows in id_runs(conn)["runs"]]


def index_state(data_dir) -> tuple[int, int]:
    """(ids_merged_through, rows of event_ids and the runs) as the file holds them."""
    conn = sqlite3.connect(data_dir / "evstore.db")
    try:
        through = conn.execute("SELECT value FROM settings WHERE key = 'ids_merged_through'").fetchone()
        rows = sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                   for table in ["event_ids", *run_tables(conn)])
        return int(through[0]) if through else 0, rows
    finally:
        conn.close()


async def until_merged(data_dir, log: Log, position: int) -> None:
    """Write into another stream until a merge has taken everything up to `position` (bounded)."""
    for _ in range(200):
        if index_state(data_dir)[0] >= position:
            return
        await log.append("filler", "any", [ev()])
    raise AssertionError(f"ids up to {position} were not merged")


def random_id() -> bytes:
    return uuid.uuid4().bytes


def time_ordered_id() -> bytes:
    return uuid7_bytes()[0]


@pytest.mark.parametrize("make_id", [random_id, time_ordered_id])
async def test_merged_ids_answer_retries_and_refuse_reuse(log, tmp_path, tiny_window, make_id):
    """Random ids pass through the window, UUIDv7 ones go to `event_ids` at once: both answer the same."""
    sent = {f"order-{i}": [ev(event_id=make_id()), ev(event_id=make_id())] for i in range(20)}
    replies = dict(zip(sent, await asyncio.gather(*(log.append(s, "no_stream", e) for s, e in sent.items()))))
    await until_merged(tmp_path / "data", log, max(r.position for r in replies.values()))
    through, rows = index_state(tmp_path / "data")
    assert rows >= 40 and through >= 40
    retried = await asyncio.gather(*(log.append(s, "no_stream", e) for s, e in sent.items()))
    assert dict(zip(sent, retried)) == replies
    first = sent["order-0"]
    with pytest.raises(DuplicateEventId, match="other content"):
        await log.append("order-0", "any", [ev(data={"n": 1}, event_id=first[0].id)])
    with pytest.raises(DuplicateEventId):
        await log.append("elsewhere", "any", [first[1]])
    with pytest.raises(DuplicateEventId):  # beside a fresh id
        await log.append("elsewhere", "any", [ev(event_id=make_id()), first[1]])
    with pytest.raises(DuplicateEventId, match="was not"):
        await log.append("order-0", "any", [first[0], ev()])
    page = await log.read_all(limit=1000)
    assert len({r.id for r in page.records}) == len(page.records) == log.head


async def test_ids_stay_found_across_restarts_in_the_middle_of_a_merge(tmp_path, tiny_window):
    data = tmp_path / "data"
    sent: list[tuple[str, list, object]] = []
    for round_ in range(4):
        storage = Storage(data)
        storage.open()
        try:
            log = Log(storage)
            for stream, events, reply in sent:  # every earlier append, wherever its ids are now
                assert await log.append(stream, "any", events) == reply
            for i in range(7):  # a merge starts and is left half done by the close
                events = [ev(), ev()]
                sent.append((f"r{round_}-{i}", events, await log.append(f"r{round_}-{i}", "no_stream", events)))
            assert index_state(data)[0] <= log.head
        finally:
            storage.close()
    assert index_state(data)[1] > 0


@pytest.mark.parametrize("make_id", [random_id, time_ordered_id])
async def test_a_truncated_id_can_be_written_again_after_it_was_merged(log, tmp_path, tiny_window, make_id):
    base = await log.append("base", "no_stream", [ev() for _ in range(3)])
    lost = [ev(event_id=make_id()), ev(event_id=make_id())]
    await log.append("lost", "no_stream", lost)
    await until_merged(tmp_path / "data", log, base.position + 2)
    assert index_state(tmp_path / "data")[0] > base.position
    await log.truncate_after(base.position)
    assert index_state(tmp_path / "data")[0] <= base.position
    # other events take the truncated positions, then the truncated ids come back elsewhere
    other = await log.append("other", "any", [ev(), ev()])
    assert other.position == base.position + 2
    again = await log.append("lost-again", "no_stream", [ev(data={"n": 2}, event_id=e.id) for e in lost])
    assert again.position == base.position + 4
    await until_merged(tmp_path / "data", log, again.position)
    assert await log.append("lost-again", "no_stream", [ev(data={"n": 2}, event_id=e.id) for e in lost]) == again
    with pytest.raises(DuplicateEventId):
        await log.append("lost", "any", [lost[0]])


async def test_a_group_commit_of_random_ids_writes_no_more_pages_as_the_log_grows(tmp_path, monkeypatch):
    """Client-made ids are random: in format 3's UNIQUE index each landed on a random page, so one group commit
    of a few thousand events wrote about as many index pages as the index had (0.3-0.5x the appends/s of
    node-made ids at 10 M events). The window keeps them off the file until a merge writes them in key order.
    Measured in WAL bytes (the checkpointer stopped, so the WAL only grows)."""
    monkeypatch.setattr(storage_threads, "checkpoint", lambda conn, stopping=None: False)
    monkeypatch.setattr(storage_threads, "zero_fill", lambda conn, path: 0)  # the file's size counts what is written
    storage = Storage(tmp_path / "data")
    storage.open()
    wal = storage_wal.wal_path(storage.path)

    async def commit_bytes(stream: str) -> int:
        before = os.path.getsize(wal)
        await log.append(stream, "no_stream", [ev() for _ in range(2000)])
        return os.path.getsize(wal) - before

    try:
        log = Log(storage)
        await log.append("seed", "any", [ev() for _ in range(10_000)])
        small = await commit_bytes("at-10k")
        for i in range(9):
            await log.append(f"grow-{i}", "any", [ev() for _ in range(10_000)])
        large = await commit_bytes("at-100k")
        assert large < small * 1.3, f"a commit of 2,000 random ids wrote {large} bytes at 100 k ids, {small} at 10 k"
    finally:
        storage.close()


async def test_the_window_never_claims_records_past_the_head(tmp_path):
    """A merged position past the head (records lost after it was set) is lowered on open: what is written there
    next is indexed in the window."""
    data = tmp_path / "data"
    storage = Storage(data)
    storage.open()
    storage.close()
    conn = sqlite3.connect(data / "evstore.db")
    conn.execute("INSERT OR REPLACE INTO settings VALUES ('ids_merged_through', '50')")
    conn.commit()
    conn.close()

    again = Storage(data)
    again.open()
    try:
        log = Log(again)
        events = [ev()]
        first = await log.append("s", "any", events)
        assert index_state(data)[0] == 0
        assert await log.append("s", "any", events) == first
    finally:
        again.close()


# the filter of random ids (node/storage/idfilter.py) ---------------------------------------------------------


def test_the_filter_holds_every_key_it_was_given_across_its_parts_and_its_bytes(monkeypatch):
    monkeypatch.setattr(idfilter, "FIRST_CAPACITY", 100)
    id_filter = idfilter.IdFilter()
    held = [uuid.uuid4().bytes for _ in range(1000)] + [uuid.uuid1().bytes for _ in range(1000)]
    id_filter.add(idfilter.keys(held[:10]))
    id_filter.add(idfilter.keys(held[10:]))
    assert id_filter.count == 2000 and len(id_filter._parts) == 3  # 100, 400, then 1,600 ids
    copy = idfilter.IdFilter.from_bytes(id_filter.to_bytes())
    assert all(f.may_hold(idfilter.key(i)) for f in (id_filter, copy) for i in held)
    fresh = [uuid.uuid4().bytes for _ in range(2000)]
    assert sum(copy.may_hold(idfilter.key(i)) for i in fresh) < 200  # 1 % per part, three parts
    assert idfilter.keys([uuid7_bytes()[0]]) == []  # UUIDv7 ids are probed in event_ids, never filtered


@pytest.mark.parametrize("damage", [lambda b: b[:-1], lambda b: b[:-5] + b"xxxxx", lambda b: b"{}\n" + b,
                                    lambda b: b"", lambda b: b.replace(b'"format": 1', b'"format": 9')])
def test_a_damaged_filter_file_is_refused(damage):
    id_filter = idfilter.IdFilter()
    id_filter.add(idfilter.keys([uuid.uuid4().bytes for _ in range(10)]))
    with pytest.raises(ValueError):
        idfilter.IdFilter.from_bytes(damage(id_filter.to_bytes()))


def probes_of_the_id_tables(monkeypatch) -> list[str]:
    """The writer's statements that look ids up in the window or in `event_ids` (a trace on its connection)."""
    statements: list[str] = []
    connect = storage_threads.connect

    def traced(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: statements.append(sql) if "ids WHERE id IN" in sql else None)
        return conn

    monkeypatch.setattr(storage_threads, "connect", traced)
    return statements


async def test_fresh_random_ids_are_appended_without_probing_the_id_tables(tmp_path, tiny_window, monkeypatch):
    """A random id probed in `event_ids` reads a leaf page of its own (~4-5 us at 10 M ids), in the window ~1.8 us:
    the writer asks the filter first, and probes only for the ids it may hold."""
    statements = probes_of_the_id_tables(monkeypatch)
    storage = Storage(tmp_path / "data")
    storage.open()
    try:
        log = Log(storage)
        stored = [ev() for _ in range(20)]
        first = await log.append("stored", "no_stream", stored)
        await until_merged(tmp_path / "data", log, first.position + 19)
        statements.clear()
        for i in range(5):
            await asyncio.gather(*(log.append(f"fresh-{i}-{j}", "no_stream", [ev(), ev()]) for j in range(10)))
        assert statements == []
        assert await log.append("stored", "no_stream", stored) == first  # a retry is still answered
        assert statements
    finally:
        storage.close()


async def restart_answers_every_retry(data, sent) -> None:
    storage = Storage(data)
    storage.open()
    try:
        log = Log(storage)
        for stream, events, reply in sent:
            assert await log.append(stream, "any", events) == reply, stream
        with pytest.raises(DuplicateEventId):
            await log.append("elsewhere", "any", [sent[0][1][0]])
    finally:
        storage.close()


async def append_some(data, sent, prefix: str, *, count: int = 12, save_at_close: bool = True,
                      monkeypatch=None) -> None:
    storage = Storage(data)
    storage.open()
    if not save_at_close:  # as if killed: the filter file is the last merge's
        monkeypatch.setattr(storage._id_window, "save_filter", lambda conn, *, head: None)
    try:
        log = Log(storage)
        for i in range(count):
            events = [ev(), ev()]
            sent.append((f"{prefix}-{i}", events, await log.append(f"{prefix}-{i}", "no_stream", events)))
    finally:
        storage.close()


def filter_files(data) -> list[str]:
    return sorted(p.name for p in data.glob("idfilter-*"))


async def test_the_filter_is_saved_and_read_back_across_restarts_and_kills(tmp_path, tiny_window, monkeypatch):
    data, sent = tmp_path / "data", []
    await append_some(data, sent, "a")
    assert len(filter_files(data)) == 1
    await restart_answers_every_retry(data, sent)
    await append_some(data, sent, "killed", save_at_close=False, monkeypatch=monkeypatch)
    await append_some(data, sent, "killed-again", count=3, save_at_close=False, monkeypatch=monkeypatch)
    await restart_answers_every_retry(data, sent)
    assert len(filter_files(data)) == 1


@pytest.mark.parametrize("loss", ["deleted", "damaged", "unnamed"])
async def test_a_lost_filter_file_is_rebuilt_from_the_index(tmp_path, tiny_window, loss):
    data, sent = tmp_path / "data", []
    await append_some(data, sent, "a")
    [name] = filter_files(data)
    if loss == "deleted":
        (data / name).unlink()
    elif loss == "damaged":
        (data / name).write_bytes((data / name).read_bytes()[:-100])
    else:  # a copy of the database without its filter (settings name a file this directory does not have)
        conn = sqlite3.connect(data / "evstore.db")
        conn.execute("UPDATE settings SET value = replace(value, 'idfilter-', 'idfilter-x') WHERE key = 'id_filter'")
        conn.commit()
        conn.close()
    await restart_answers_every_retry(data, sent)
    assert filter_files(data) != [name] and len(filter_files(data)) == 1


async def saved_with_a_tail_to_lose(data, sent):
    """Some appends, then four random-id events in stream "lost" (its reply returned) and a close, which saves
    the filter through them."""
    await append_some(data, sent, "kept", count=3)
    storage = Storage(data)
    storage.open()
    try:
        return await Log(storage).append("lost", "no_stream", [ev() for _ in range(4)])
    finally:
        storage.close()


async def test_a_truncation_below_the_saved_filter_is_not_forgotten(tmp_path, tiny_window, monkeypatch):
    """The file holds the ids of the records up to where it was saved; a truncation below that lowers it in the
    same transaction, so ids later written at the truncated positions are read back into the filter on open,
    even when no later save succeeded (merges since then took the window past the old mark)."""
    data, sent = tmp_path / "data", []
    lost = await saved_with_a_tail_to_lose(data, sent)
    storage = Storage(data)
    storage.open()

    def disk_full(*args):
        raise OSError("no space left on device")

    monkeypatch.setattr(idfilter, "write_file", disk_full)
    try:
        log = Log(storage)
        await log.truncate_after(lost.position - 4)
        events = [ev(), ev()]
        sent.append(("after", events, await log.append("after", "no_stream", events)))
        assert sent[-1][2].position == lost.position - 2
        await until_merged(data, log, lost.position + 8)
    finally:
        storage.close()
    monkeypatch.undo()
    await restart_answers_every_retry(data, sent)


async def test_the_filter_never_claims_records_past_the_head(tmp_path, tiny_window, monkeypatch):
    """Records past the position the filter was saved through may be lost (durability interval and a machine
    crash): the mark is lowered on open, so what is written there next is read back into the filter."""
    data, sent = tmp_path / "data", []
    lost = await saved_with_a_tail_to_lose(data, sent)
    conn = sqlite3.connect(data / "evstore.db")
    conn.execute("DELETE FROM events WHERE position > ?", (lost.position - 4,))
    conn.execute("DELETE FROM streams WHERE stream = 'lost'")
    conn.commit()
    conn.close()
    await append_some(data, sent, "after", count=2, save_at_close=False, monkeypatch=monkeypatch)
    assert sent[-2][2].position == lost.position - 2
    await restart_answers_every_retry(data, sent)


async def test_a_follower_knows_the_random_ids_it_was_shipped(tmp_path, tiny_window):
    """A follower writes no client-made id itself: its filter learns them from the shipped rows, so that once
    it leads, a retry of an append made through the old leader is answered, not written again."""
    leader_storage, follower_storage = Storage(tmp_path / "leader"), Storage(tmp_path / "follower")
    leader_storage.open()
    follower_storage.open()
    try:
        leader, follower = Log(leader_storage), Log(follower_storage)
        sent = [(f"s-{i}", [ev(), ev()]) for i in range(10)]
        replies = [await leader.append(stream, "no_stream", events) for stream, events in sent]
        await follower.apply_replicated_rows(await leader.rows_from(1))
        for (stream, events), reply in zip(sent, replies):
            assert await follower.append(stream, "any", events) == reply
        assert follower.head == leader.head
    finally:
        leader_storage.close()
        follower_storage.close()


def node_made() -> NewEvent:
    return NewEvent(uuid7_bytes()[0], "Happened", b"{}", b"{}", given_id=False)


@pytest.mark.parametrize("killed", [False, True])
async def test_start_up_reads_a_bounded_tail_of_a_log_of_node_made_ids(tmp_path, tiny_window, monkeypatch, killed):
    """The window and the filter are rebuilt from the records past their saved positions. A log of UUIDv7 ids
    leaves the window empty, so no merge was ever due: its position stayed at 0 and every start read the whole
    log (~20 s at 10 M events). A merge is now also due once the head is MERGE_SPAN_POSITIONS past it."""
    monkeypatch.setattr(storage_ids, "MERGE_SPAN_POSITIONS", 50)
    data = tmp_path / "data"
    storage = Storage(data)
    storage.open()
    if killed:  # the saves after each merge happen, the one at close does not
        save = storage._id_window.save_filter
        monkeypatch.setattr(storage._id_window, "save_filter",
                            lambda conn, *, head: None if storage._closed else save(conn, head=head))
    try:
        log = Log(storage)
        await log.append("random", "no_stream", [ev(), ev()])
        for i in range(30):
            await log.append(f"s-{i}", "no_stream", [node_made() for _ in range(10)])
        head = log.head
    finally:
        storage.close()
    read_from: list[int] = []
    for name in ("add_to_window", "random_ids"):
        original = getattr(storage_ids, name)
        monkeypatch.setattr(storage_ids, name, lambda conn, first, *rest, _original=original: (
            read_from.append(first), _original(conn, first, *rest))[1])
    again = Storage(data)
    again.open()
    try:
        assert read_from and min(read_from) > head - 50 - 10, (read_from, head)
        first = (await Log(again).read_stream("random", start=1, limit=1)).records[0]
        with pytest.raises(DuplicateEventId):  # the random ids written before are still known
            await Log(again).append("elsewhere", "any", [ev(event_id=first.id)])
    finally:
        again.close()


async def test_a_random_id_the_node_did_not_take_from_a_client_is_in_the_filter_too(log):
    """Every id the node writes itself is a UUIDv7 today; should one not be, the flush reads it back into the
    filter rather than leave a retry of it unrecognised."""
    event = ev()
    await log.append("made", "no_stream", [NewEvent(event.id, event.type, event.data, event.metadata,
                                                    given_id=False)])
    with pytest.raises(DuplicateEventId):
        await log.append("elsewhere", "any", [ev(event_id=event.id)])


def test_an_empty_filter_is_saved_without_its_bits():
    """A log of node-made ids has no random id: its saved filter stays a few hundred bytes."""
    data = idfilter.IdFilter().to_bytes()
    assert len(data) < 500
    copy = idfilter.IdFilter.from_bytes(data)
    copy.add(idfilter.keys([uuid.uuid4().bytes]))
    assert copy.count == 1


# runs of random ids (format 5) ----------------------------------------------------------------------------------


@pytest.fixture
def small_runs(monkeypatch):
    monkeypatch.setattr(storage_ids, "WINDOW_MERGE_ROWS", 1000)
    monkeypatch.setattr(storage_ids, "MERGE_SLICE_ROWS", 1000)


async def until_upkeep_done(storage: Storage, log: Log) -> None:
    """Write node-made events (no random id) until the writer has no upkeep of the index left (bounded): it does
    a slice after each group commit."""
    for _ in range(1000):
        if not storage._id_window.merge_due(storage.head):
            return
        await log.append("tick", "any", [node_made()])
    raise AssertionError("the index's upkeep did not finish")


def runs_as_stored(data_dir) -> dict:
    conn = sqlite3.connect(data_dir / "evstore.db")
    try:
        return id_runs(conn)
    finally:
        conn.close()


def run_levels(data_dir) -> list[int]:
    return [level for _table, level, _rows in runs_as_stored(data_dir)["runs"]]


async def upkeep_bytes_per_id(data_dir, monkeypatch, ids: int) -> float:
    """WAL bytes the index's upkeep (merge slices) wrote per random id, over a log grown to `ids` random ids in
    appends of 1,000, the upkeep done after each (the checkpointer stopped, so the WAL only grows)."""
    storage = Storage(data_dir)
    wal = storage_wal.wal_path(storage.path)
    written = [0]
    merge_slice = storage_ids.IdWindow.merge_slice

    def measured(self, conn, head):
        before = os.path.getsize(wal)
        try:
            merge_slice(self, conn, head)
        finally:
            written[0] += os.path.getsize(wal) - before

    with monkeypatch.context() as patched:
        patched.setattr(storage_threads, "checkpoint", lambda conn, stopping=None: False)
        patched.setattr(storage_threads, "zero_fill", lambda conn, path: 0)  # the file's size counts what is written
        patched.setattr(storage_ids.IdWindow, "merge_slice", measured)
        storage.open()
        try:
            log = Log(storage)
            for i in range(ids // 1000):
                await log.append(f"s-{i}", "no_stream", [ev() for _ in range(1000)])
                await until_upkeep_done(storage, log)
        finally:
            storage.close()
    return written[0] / ids


async def test_the_index_upkeep_per_random_id_does_not_grow_with_the_log(tmp_path, small_runs, monkeypatch):
    """Format 4 merged the window into one table: each merge rewrote about every leaf of it, so the bytes (and
    time) per id grew in proportion to the log (3-6 us per id at 10 M ids, ten times that at 100 M). Runs are
    written at their own end and merged RUN_FANIN at a time: an id is written once per level."""
    small = await upkeep_bytes_per_id(tmp_path / "small", monkeypatch, 16_000)
    large = await upkeep_bytes_per_id(tmp_path / "large", monkeypatch, 96_000)
    assert large < small * 2, f"the upkeep wrote {large:.0f} bytes per id at 96 k ids, {small:.0f} at 16 k"
    levels = run_levels(tmp_path / "large")
    assert max(levels) >= 2 and all(levels.count(n) < storage_ids.RUN_FANIN for n in set(levels)), levels


async def test_ids_are_found_in_every_run_and_level_across_restarts(tmp_path, monkeypatch):
    """A retry is answered and a reuse refused wherever its id is: the window, a run being written, a run of any
    level, a merge of runs left half done by a close (resumed at the next start, from the settings)."""
    monkeypatch.setattr(storage_ids, "WINDOW_MERGE_ROWS", 6)
    monkeypatch.setattr(storage_ids, "MERGE_SLICE_ROWS", 4)
    data = tmp_path / "data"
    sent: list[tuple[str, list, object]] = []
    levels_seen: set[int] = set()
    merge_left = False
    for round_ in range(6):
        if sent:
            await restart_answers_every_retry(data, sent)
        await append_some(data, sent, f"r{round_}", count=18)
        levels_seen.update(run_levels(data))
        merge_left |= runs_as_stored(data)["merge"] is not None
    assert {0, 1, 2} <= levels_seen and merge_left, (levels_seen, merge_left)


@pytest.mark.parametrize("make_id", [random_id, time_ordered_id])
async def test_a_merge_of_runs_keeps_an_ids_newest_position(log, tmp_path, small_runs, monkeypatch, make_id):
    """A random id truncated away and written again later sits in two runs (the older row stale): merging them
    keeps the newer, which names the record, and a retry is still answered (a UUIDv7 one: in `event_ids`)."""
    monkeypatch.setattr(storage_ids, "WINDOW_MERGE_ROWS", 2)
    storage = log.storage
    base = await log.append("base", "no_stream", [ev(), ev()])
    lost = [ev(event_id=make_id()), ev(event_id=make_id())]
    await log.append("lost", "no_stream", lost)
    await until_upkeep_done(storage, log)
    await log.truncate_after(base.position)
    await log.append("other", "any", [ev(), ev(), ev()])
    again = await log.append("lost-again", "no_stream", [ev(data={"n": 2}, event_id=e.id) for e in lost])
    for i in range(8):  # more runs, until the two holding those ids were merged
        await log.append(f"more-{i}", "no_stream", [ev(), ev()])
        await until_upkeep_done(storage, log)
    assert max(run_levels(tmp_path / "data")) >= 1
    assert await log.append("lost-again", "no_stream", [ev(data={"n": 2}, event_id=e.id) for e in lost]) == again
    with pytest.raises(DuplicateEventId):
        await log.append("lost", "any", [lost[0]])
