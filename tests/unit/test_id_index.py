"""The event-id index (node/storage/ids.py): the newest ids in the writer's in-memory window, the rest merged into
`event_ids` in key order. Idempotency and duplicate refusals must not depend on which part holds an id: these tests
make the window tiny so that ids are merged, a slice at a time, while appends go on."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid

import pytest

from evstore.ids import uuid7_bytes
from evstore.node.errors import DuplicateEventId
from evstore.node.log import Log
from evstore.node.storage import Storage
from evstore.node.storage import ids as storage_ids
from evstore.node.storage import threads as storage_threads
from loghelpers import ev


@pytest.fixture
def tiny_window(monkeypatch):
    monkeypatch.setattr(storage_ids, "WINDOW_MERGE_ROWS", 8)
    monkeypatch.setattr(storage_ids, "MERGE_SLICE_ROWS", 3)


def index_state(data_dir) -> tuple[int, int]:
    """(ids_merged_through, rows of event_ids) as the file holds them."""
    conn = sqlite3.connect(data_dir / "evstore.db")
    try:
        through = conn.execute("SELECT value FROM settings WHERE key = 'ids_merged_through'").fetchone()
        return int(through[0]) if through else 0, conn.execute("SELECT count(*) FROM event_ids").fetchone()[0]
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
    storage = Storage(tmp_path / "data")
    storage.open()
    wal = str(storage.path) + "-wal"

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
