"""The storage format on real SQLite files: costs that do not grow with the log (start-up, listing by prefix,
filtered $all reads through the type and category indexes), payloads kept as sent with their content type,
and the migration of a format-1 log on open."""
from __future__ import annotations

import asyncio
import sqlite3
import uuid

import crc32c
import orjson
import pytest

from evstore.node import storage as storage_module
from evstore.node.storage import ids as storage_ids
from evstore.node.storage import threads as storage_threads
from evstore.node.errors import DuplicateEventId
from evstore.node.eventjson import event_json
from evstore.node.log import AllFilter, Log, NewEvent, StreamAppend
from evstore.node.storage import DATA_BINARY, METADATA_BINARY, Storage, rendered_json
from loghelpers import ev


class StepCounter:
    """Counts the SQLite virtual-machine steps of every connection storage opens (a cost that grows with the
    rows a statement visits, whatever the machine's speed)."""

    def __init__(self, monkeypatch) -> None:
        self.steps = 0
        real = storage_threads.connect

        def counting(*args, **kwargs):
            conn = real(*args, **kwargs)
            conn.set_progress_handler(self._tick, 100)
            return conn

        monkeypatch.setattr(storage_threads, "connect", counting)  # every connection Storage opens

    def _tick(self) -> int:
        self.steps += 100
        return 0


async def fill(log: Log, streams: int, per_stream: int = 1, event_type: str = "Common") -> None:
    for start in range(0, streams, 500):
        await asyncio.gather(*(log.append(f"s{i:07d}-x", "any", [ev(event_type) for _ in range(per_stream)])
                               for i in range(start, min(start + 500, streams))))


async def open_steps(tmp_path, monkeypatch, events: int) -> int:
    data = tmp_path / f"log-{events}"
    storage = Storage(data)
    storage.open()
    log = Log(storage)
    for _ in range(events // 1000):
        await log.append("big", "any", [ev() for _ in range(1000)])
    storage.close()
    counter = StepCounter(monkeypatch)
    again = Storage(data)
    again.open()
    again.close()
    monkeypatch.undo()
    return counter.steps


async def test_start_up_does_not_scan_the_log(tmp_path, monkeypatch):
    """Start-up reads the id index's window (the ids not merged yet), which is bounded, not the log."""
    with pytest.MonkeyPatch.context() as window:  # open_steps undoes its own monkeypatch
        window.setattr(storage_ids, "WINDOW_MERGE_ROWS", 1000)
        small = await open_steps(tmp_path, monkeypatch, 1000)
        large = await open_steps(tmp_path, monkeypatch, 20_000)
    assert large < small * 2 + 2000, f"opening 20x the events took {large} steps against {small}"


async def test_listing_by_prefix_visits_only_the_page(log, monkeypatch):
    await fill(log, 3000)
    await asyncio.gather(*(log.set_metadata(f"s{i:07d}-x", {"maxCount": 5}) for i in range(500)))  # $$ streams
    counter = StepCounter(monkeypatch)  # reader connections open on the first read, after this
    rows, nxt = await log.list_streams("a", None, 10)
    assert rows == [] and nxt is None
    rows, nxt = await log.list_streams("s0001", None, 10)
    assert len(rows) == 10 and nxt == rows[-1].stream
    rows, nxt = await log.list_streams(None, None, 10)  # the $$ streams sort first and are skipped
    assert len(rows) == 10
    assert counter.steps < 5000, f"three small listings took {counter.steps} steps over 3000 streams"


async def test_filtered_reads_use_the_indexes(log):
    await log.append("order-1", "any", [ev("Common") for _ in range(5000)])
    await log.append("user-7", "any", [ev("Rare")])
    await log.append("order-1", "any", [ev("Common") for _ in range(5000)])
    plans = []
    conn = log.storage._reader_conn()
    conn.set_trace_callback(plans.append)
    try:
        for filters in (AllFilter(types=["Rare"]), AllFilter(type_prefix="Ra"), AllFilter(stream_prefix="user-")):
            page = await log.read_all(limit=10, filters=filters)
            assert [r.position for r in page.records] == [5001] and page.next is None, filters
            page = await log.read_all(limit=10, backward=True, filters=filters)
            assert [r.position for r in page.records] == [5001] and page.next is None, filters
    finally:
        conn.set_trace_callback(None)
    details = " ".join(row[3] for row in conn.execute(
        "EXPLAIN QUERY PLAN SELECT position FROM events INDEXED BY events_by_type WHERE type = 'x' "
        "AND position >= 1 ORDER BY position"))
    assert "events_by_type" in details


async def test_filtered_read_pages_and_cursor_semantics(log, monkeypatch):
    for i in range(30):
        await log.append(f"order-{i % 3}", "any", [ev("OrderPlaced" if i % 2 else "OrderShipped")])
    seen, cursor = [], None
    while True:
        page = await log.read_all(start=cursor, limit=4, filters=AllFilter(types=["OrderPlaced", "OrderShipped"],
                                                              stream_prefix="order-"))
        seen += [r.position for r in page.records]
        if page.next is None:
            break
        cursor = page.next
    assert seen == list(range(1, 31))
    monkeypatch.setattr("evstore.node.log.ALL_SCAN_WINDOW", 4)
    seen, cursor, requests = [], None, 0
    while True:  # a residual filter (the glob) keeps each request within the scan budget
        page = await log.read_all(start=cursor, limit=100,
                                  filters=AllFilter(types=["OrderPlaced"], stream_pattern="*-1"))
        requests += 1
        seen += [r.position for r in page.records]
        if page.next is None:
            break
        cursor = page.next
    assert seen == [i + 1 for i in range(30) if i % 2 and i % 3 == 1] and requests > 1


async def test_payloads_are_stored_as_sent_with_their_content_type(log):
    exact = b'{"n":18446744073709551617,  "e":1E2}'
    binary = NewEvent(uuid.uuid4().bytes, "Bin", b"\x00\xff\x10", b"\x01", flags=DATA_BINARY | METADATA_BINARY)
    await log.append("p", "any", [NewEvent(uuid.uuid4().bytes, "Json", exact, b"{}"), binary])
    page = await log.read_stream("p", limit=10)
    assert [(r.data, r.metadata, r.flags) for r in page.records] == [
        (exact, b"{}", 0), (b"\x00\xff\x10", b"\x01", DATA_BINARY | METADATA_BINARY)]
    flipped = page.records[1]
    flipped.flags = 0
    assert flipped.compute_checksum() != flipped.checksum  # the content type is covered by the checksum
    assert await log.verify() == {"checked": 2, "corrupt": []}


V1_SCHEMA = """
CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
    id BLOB NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL, metadata BLOB NOT NULL, created INTEGER NOT NULL,
    epoch INTEGER NOT NULL, checksum INTEGER NOT NULL);
CREATE UNIQUE INDEX events_by_stream ON events(stream, version);
CREATE UNIQUE INDEX events_by_id ON events(id);
CREATE TABLE streams (stream TEXT PRIMARY KEY, version INTEGER NOT NULL, created INTEGER, updated INTEGER,
    deleted TEXT NOT NULL DEFAULT 'no', metadata BLOB) WITHOUT ROWID;
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE epochs (epoch INTEGER PRIMARY KEY, start INTEGER NOT NULL);
INSERT INTO settings VALUES ('format', '1');
"""


def v1_checksum(event_id, stream, event_type, data, metadata, position, version, created, epoch) -> int:
    """Format 1's record checksum: format 2's (below) of a JSON event, which format 1's all are."""
    return v2_checksum(event_id, stream, event_type, data, metadata, 0, position, version, created, epoch)


async def test_a_format_1_log_is_migrated_on_open(tmp_path):
    data_dir = tmp_path / "v1"
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / "evstore.db")
    conn.executescript(V1_SCHEMA)
    rows = []
    for position in (1, 2, 3):
        event_id, data = uuid.uuid4().bytes, orjson.dumps({"n": position})
        event_type = "Old" if position < 3 else "Other"
        rows.append((position, "legacy-1", position, event_id, event_type, data, b"{}", 1000 + position, 0,
                     v1_checksum(event_id, "legacy-1", event_type, data, b"{}", position, position, 1000 + position,
                                 0)))
    gone_id = uuid.uuid4().bytes  # a stream soft deleted by format 1 (truncateBefore past its end)
    rows.append((4, "gone-1", 1, gone_id, "Old", b"{}", b"{}", 1004, 0,
                 v1_checksum(gone_id, "gone-1", "Old", b"{}", b"{}", 4, 1, 1004, 0)))
    conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    conn.execute("INSERT INTO streams VALUES ('legacy-1', 3, 1001, 1003, 'no', NULL)")
    conn.execute("""INSERT INTO streams VALUES ('gone-1', 1, 1004, 1004, 'no', CAST('{"truncateBefore":2}' AS BLOB))""")
    conn.commit()
    conn.close()

    storage = Storage(data_dir)
    storage.open()
    try:
        log = Log(storage)
        assert await log.verify() == {"checked": 4, "corrupt": []}
        gone = await log.stream_info("gone-1")
        assert (gone.deleted, gone.metadata) == ("soft", {"truncateBefore": 2})
        page = await log.read_all(limit=10, filters=AllFilter(types=["Other"]))
        assert [r.position for r in page.records] == [3] and page.records[0].flags == 0
        result = await log.append("legacy-1", 3, [ev("New")])
        assert result.position == 5
        assert (await log.read_all(start=5, limit=1)).records[0].created > 1004
    finally:
        storage.close()
    check = sqlite3.connect(data_dir / "evstore.db")
    assert check.execute("SELECT value FROM settings WHERE key = 'format'").fetchone()[0] == \
        storage_module.FORMAT_VERSION
    check.close()


V2_SCHEMA = (V1_SCHEMA.replace("checksum INTEGER NOT NULL);",
                               "checksum INTEGER NOT NULL, flags INTEGER NOT NULL DEFAULT 0);")
             .replace("('format', '1')", "('format', '2')"))


def v2_checksum(event_id, stream, event_type, data, metadata, flags, position, version, created, epoch) -> int:
    """Format 2's record checksum, written out independently of the code under test: format 1's, with the
    content-type byte after the payload when it is not 0."""
    import struct
    s, t = stream.encode(), event_type.encode()
    payload = crc32c.crc32c(event_id + struct.pack("<IIII", len(s), len(t), len(data), len(metadata)) + s + t
                            + data + metadata)
    if flags:
        payload = crc32c.crc32c(bytes([flags]), payload)
    return crc32c.crc32c(struct.pack("<QQqq", position, version, created, epoch), payload)


async def test_a_format_2_log_is_migrated_on_open_and_reads_the_same(tmp_path):
    data_dir = tmp_path / "v2"
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / "evstore.db")
    conn.executescript(V2_SCHEMA)
    payloads = [(b'{"n":18446744073709551617, "s":"caf\xc3\xa9"}', b"{}", 0), (b"\x00\xff", b'{"m":1}', DATA_BINARY),
                (b"[1]", b"\x01", METADATA_BINARY), (b"\x02", b"\x03", DATA_BINARY | METADATA_BINARY)]
    for position, (data, metadata, flags) in enumerate(payloads, start=1):
        event_id = uuid.uuid4().bytes
        conn.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                     (position, 'old-"1"', position, event_id, "T\u00e9", data, metadata, 1_700_000_000_000_000 + position,
                      0, v2_checksum(event_id, 'old-"1"', "T\u00e9", data, metadata, flags, position, position,
                                     1_700_000_000_000_000 + position, 0), flags))
    conn.execute("""INSERT INTO streams VALUES ('old-"1"', 4, 1, 4, 'no', NULL)""")
    conn.commit()
    conn.close()

    storage = Storage(data_dir)
    storage.open()
    try:
        log = Log(storage)
        assert await log.verify() == {"checked": 4, "corrupt": []}
        records = (await log.read_stream('old-"1"', limit=10)).records
        assert [(r.data, r.metadata, r.flags) for r in records] == payloads
        rendered = (await log.read_stream('old-"1"', limit=10, rendered=True)).records
        assert [rendered_json(e) for e in rendered] == [orjson.dumps(event_json(r)) for r in records]
    finally:
        storage.close()
    check = sqlite3.connect(data_dir / "evstore.db")
    assert check.execute("SELECT value FROM settings WHERE key = 'format'").fetchone()[0] == \
        storage_module.FORMAT_VERSION
    # a JSON payload is kept once, in the reply text; a binary one also as its raw bytes
    assert check.execute("SELECT length(data), length(metadata) FROM events ORDER BY position").fetchall() == \
        [(0, 0), (2, 0), (0, 1), (1, 1)]
    check.close()


async def appends_of_five_streams(data_dir) -> tuple[dict, dict]:
    """(the events sent to each of five streams, the replies) of a new log, closed after."""
    storage = Storage(data_dir)
    storage.open()
    sent = {f"s-{i}": [ev(), ev()] for i in range(5)}
    try:
        log = Log(storage)
        return sent, {s: await log.append(s, "no_stream", e) for s, e in sent.items()}
    finally:
        storage.close()


async def answers_every_retry(log: Log, sent: dict, replies: dict) -> None:
    assert {s: await log.append(s, "no_stream", e) for s, e in sent.items()} == replies
    with pytest.raises(DuplicateEventId):
        await log.append("elsewhere", "any", [sent["s-0"][0]])


async def test_a_format_3_log_gets_its_id_index_table_on_open(tmp_path):
    """Format 3 kept the ids in a UNIQUE index of the events table; format 4 in `event_ids` (node/storage/ids.py),
    built from that index on open: every id found again, the old index dropped."""
    data_dir = tmp_path / "v3"
    sent, replies = await appends_of_five_streams(data_dir)
    conn = sqlite3.connect(data_dir / "evstore.db")  # back to format 3's schema, as its node left it
    conn.executescript("""CREATE UNIQUE INDEX events_by_id ON events(id); DROP TABLE event_ids;
        DELETE FROM settings WHERE key = 'ids_merged_through'; UPDATE settings SET value = '3' WHERE key = 'format';""")
    conn.close()

    storage = Storage(data_dir)
    storage.open()
    try:
        log = Log(storage)
        await answers_every_retry(log, sent, replies)
    finally:
        storage.close()
    check = sqlite3.connect(data_dir / "evstore.db")
    try:
        assert check.execute("SELECT value FROM settings WHERE key IN ('format', 'ids_merged_through') "
                             "ORDER BY key").fetchall() == [(storage_module.FORMAT_VERSION,), ("10",)]
        assert check.execute("SELECT count(*) FROM event_ids").fetchone()[0] == 10
        assert check.execute("SELECT 1 FROM sqlite_master WHERE name = 'events_by_id'").fetchone() is None
    finally:
        check.close()


async def test_a_format_4_log_keeps_its_merged_random_ids_and_writes_new_ones_into_runs(tmp_path, monkeypatch):
    """Format 4 merged random ids into `event_ids`; format 5 writes them into runs (node/storage/ids.py) and
    still looks in `event_ids`: a format-4 log opens with no data changed, every id found again."""
    monkeypatch.setattr(storage_ids, "WINDOW_MERGE_ROWS", 4)
    data_dir = tmp_path / "v4"
    sent, replies = await appends_of_five_streams(data_dir)
    conn = sqlite3.connect(data_dir / "evstore.db")  # back to format 4: every merged id in event_ids, no runs
    runs = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'event_ids_run_%'").fetchall()
    assert runs
    for (table,) in runs:
        conn.execute(f"INSERT OR REPLACE INTO event_ids SELECT id, position FROM {table}")
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DELETE FROM settings WHERE key = 'id_runs'")
    conn.execute("UPDATE settings SET value = '4' WHERE key = 'format'")
    conn.commit()
    conn.close()

    storage = Storage(data_dir)
    storage.open()
    try:
        log = Log(storage)
        await answers_every_retry(log, sent, replies)
        fresh = [ev() for _ in range(6)]
        reply = await log.append("fresh", "no_stream", fresh)
        for _ in range(20):  # writes until the fresh ids are in a run
            await log.append("tick", "any", [NewEvent(uuid.uuid4().bytes, "T", b"{}", b"{}", given_id=False)])
        assert await log.append("fresh", "no_stream", fresh) == reply
    finally:
        storage.close()
    check = sqlite3.connect(data_dir / "evstore.db")
    try:
        assert check.execute("SELECT value FROM settings WHERE key = 'format'").fetchone() == \
            (storage_module.FORMAT_VERSION,)
        assert check.execute("SELECT 1 FROM settings WHERE key = 'id_runs'").fetchone() is not None
    finally:
        check.close()


async def test_every_event_is_stored_with_the_reply_text_its_record_renders(log):
    for data, metadata, flags in [(b'{"a": [1, 2.50]}', b"{}", 0), (b"\x00", b'"m"', DATA_BINARY),
                                  (b"1E2", b"\xff", METADATA_BINARY)]:
        await log.append('q-\u2603"\\', "any", [NewEvent(uuid.uuid4().bytes, "T\n", data, metadata, flags=flags)])
    await log.append_many([StreamAppend("m-1", "any", [ev(), ev()]), StreamAppend("m-2", "any", [ev()])])
    records = (await log.read_all(limit=100)).records
    rendered = (await log.read_all(limit=100, rendered=True)).records
    assert [rendered_json(e) for e in rendered] == [orjson.dumps(event_json(r)) for r in records] and len(records) == 6


async def test_events_parsed_from_a_body_are_stored_with_the_text_their_records_render(log):
    """The API hands the log each id's text (node-made ids' texts made for the whole body, a client's own text in
    lower case); the stored text is still exactly the record's."""
    from evstore.node.api.validation import append_body
    given = [str(uuid.uuid4()).upper(), str(uuid.uuid4())]
    bodies = [{"events": [{"type": "A", "data": {"n": n}} for n in range(5)]},  # node-made ids, with texts
              {"events": [{"type": "B", "id": i, "data": [i]} for i in given]},  # the client's, one upper case
              {"events": [{"type": "C", "id": str(uuid.uuid4()), "data": 1}, {"type": "C", "data": 2}]}]  # mixed
    for body in bodies:
        _expected, events = append_body(orjson.dumps(body))
        await log.append("parsed-1", "any", events)
    records = (await log.read_all(limit=100)).records
    rendered = (await log.read_all(limit=100, rendered=True)).records
    assert [rendered_json(e) for e in rendered] == [orjson.dumps(event_json(r)) for r in records] and len(records) == 9
    assert [str(uuid.UUID(bytes=r.id)) for r in records[5:7]] == [i.lower() for i in given]
    assert await log.verify() == {"checked": 9, "corrupt": []}


async def test_verify_finds_a_reply_text_that_is_not_its_records(log):
    await log.append("v", "any", [ev("Kind"), ev("Kind")])
    conn = log.storage._reader_conn()
    conn.execute("PRAGMA query_only=0")
    text = conn.execute("SELECT json FROM events WHERE position = 2").fetchone()[0].replace(b'"Kind"', b'"Kine"')
    conn.execute("UPDATE events SET json = ?, json_crc = ? WHERE position = 2", (text, crc32c.crc32c(text)))
    conn.execute("PRAGMA query_only=1")
    assert await log.verify() == {"checked": 2, "corrupt": [2]}


def test_an_unknown_format_is_refused_with_how_to_migrate(tmp_path):
    data_dir = tmp_path / "future"
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / "evstore.db")
    conn.executescript("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
                       "INSERT INTO settings VALUES ('format', '99');")
    conn.close()
    with pytest.raises(RuntimeError, match="format 99"):
        Storage(data_dir).open()
    with pytest.raises(RuntimeError, match="format 99"):  # the refused open left the data directory unlocked
        Storage(data_dir).open()


def test_the_offline_verify_reads_a_format_1_file_without_migrating_it(tmp_path):
    from evstore.node.verify import verify_data_dir

    data_dir = tmp_path / "v1"
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / "evstore.db")
    conn.executescript(V1_SCHEMA)
    event_id = uuid.uuid4().bytes
    good = v1_checksum(event_id, "s", "T", b"{}", b"{}", 1, 1, 5, 0)
    conn.execute("INSERT INTO events VALUES (1, 's', 1, ?, 'T', ?, ?, 5, 0, ?)", (event_id, b"{}", b"{}", good))
    conn.execute("INSERT INTO events VALUES (2, 's', 2, ?, 'T', ?, ?, 6, 0, 7)", (uuid.uuid4().bytes, b"{}", b"{}"))
    conn.commit()
    conn.close()
    assert verify_data_dir(data_dir) == {"checked": 2, "corrupt": [2]}
    check = sqlite3.connect(data_dir / "evstore.db")
    assert check.execute("SELECT value FROM settings WHERE key = 'format'").fetchone()[0] == "1"
    check.close()


async def test_index_reads_of_many_types_merge_in_position_order(log, monkeypatch):
    types = [f"Kind{i}" for i in range(7)]
    for i in range(200):
        await log.append(f"k-{i % 5}", "any", [ev(types[(i * 3) % 7])])
    for window in (32768, 5):
        monkeypatch.setattr("evstore.node.log.ALL_SCAN_WINDOW", window)
        for backward in (False, True):
            for filters, expected in ((AllFilter(type_prefix="Kind"), list(range(1, 201))),
                                      (AllFilter(types=types[:3]), [i + 1 for i in range(200) if (i * 3) % 7 < 3]),
                                      (AllFilter(types=types[:3], stream_prefix="k-1"),
                                       [i + 1 for i in range(200) if (i * 3) % 7 < 3 and i % 5 == 1])):
                seen, cursor = [], None
                for _ in range(500):
                    page = await log.read_all(start=cursor, limit=7, backward=backward, filters=filters)
                    seen += [r.position for r in page.records]
                    if page.next is None:
                        break
                    cursor = page.next
                assert seen == (expected[::-1] if backward else expected), (filters, backward, window)


async def test_index_reads_leave_out_system_streams_unless_asked(log, monkeypatch):
    await log.append("order-1", "any", [ev("Placed")])
    await log.append("$snapshot-order-1", "any", [ev("Placed")])  # a system stream with the same type
    await log.append("order-2", "any", [ev("Placed")])
    for window in (32768, 1):
        monkeypatch.setattr("evstore.node.log.ALL_SCAN_WINDOW", window)
        for filters, expected in ((AllFilter(types=["Placed"], include_system=False), [1, 3]),
                                  (AllFilter(types=["Placed"]), [1, 2, 3]),
                                  (AllFilter(type_prefix="Pl", include_system=False), [1, 3]),
                                  (AllFilter(stream_prefix="order-", include_system=False), [1, 3]),
                                  (AllFilter(stream_prefix="$snapshot-", include_system=False), []),
                                  (AllFilter(stream_prefix="$snapshot-"), [2])):
            seen, cursor = [], None
            for _ in range(10):
                page = await log.read_all(start=cursor, limit=10, filters=filters)
                seen += [r.position for r in page.records]
                if page.next is None:
                    break
                cursor = page.next
            assert seen == expected, (filters, window)
