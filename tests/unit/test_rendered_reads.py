"""Reads rendered straight to JSON in the reader thread (the HTTP read path) return exactly what the records
path shaped by event_json returns, for every kind of stored event, and still refuse a corrupted record."""
from __future__ import annotations

import uuid

import orjson
import pytest

from evstore.node.errors import CorruptRecord
from evstore.node.eventjson import event_json, reply_with_events
from evstore.node.log import AllFilter, NewEvent
from evstore.node.storage import (DATA_BINARY, METADATA_BINARY, rendered_json, rendered_position, rendered_size,
                                  rendered_version)
from evstore.node.storage import reads as storage_reads

STREAMS = ["plain-1", "ünï-cödé-Ω", 'quote"back\\slash-2', "tab\tnew\nline-3"]
TYPES = ["Happened", 'Typ"e\\with\u0001control', "Ω-type"]
PAYLOADS = [
    (b'{"n":18446744073709551617,"d":0.1000000000000000000001,"e":1E2}', b"{}", 0),
    (b'"just a string \\u00e9"', b'{"m":[1,2,{"x":null}]}', 0),
    (b"\x00\xffbinary\x01", b"{}", DATA_BINARY),
    (b"[1]", b"\x10\x20meta", METADATA_BINARY),
    (b"\x00", b"\x01", DATA_BINARY | METADATA_BINARY),
]


def _event(i: int) -> NewEvent:
    data, metadata, flags = PAYLOADS[i % len(PAYLOADS)]
    return NewEvent(uuid.uuid4().bytes, TYPES[i % len(TYPES)], data, metadata, flags=flags)


def _as_records(page) -> list:
    return orjson.loads(orjson.dumps([event_json(r) for r in page.records]))


def _as_rendered(page) -> list:
    return orjson.loads(reply_with_events(b"", page.records, b""))


@pytest.fixture
async def filled(log):
    for n in range(12):
        await log.append(STREAMS[n % len(STREAMS)], "any", [_event(n * 5 + k) for k in range(5)])
    return log


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("limit", [1, 7, 1000])
async def test_rendered_stream_pages_equal_the_records_path(filled, backward, limit):
    for stream in STREAMS:
        start, seen = None, 0
        while True:
            records = await filled.read_stream(stream, start=start, limit=limit, backward=backward)
            rendered = await filled.read_stream(stream, start=start, limit=limit, backward=backward, rendered=True)
            assert _as_rendered(rendered) == _as_records(records)
            assert (rendered.next, rendered.version) == (records.next, records.version)
            seen += len(records.records)
            if records.next is None:
                break
            start = records.next
        assert seen == 15


@pytest.mark.parametrize("filters", [AllFilter(), AllFilter(include_system=False), AllFilter(types=[TYPES[1]]),
                                     AllFilter(type_prefix="Ω"), AllFilter(stream_prefix="ünï-"),
                                     AllFilter(stream_pattern="*line*")], ids=repr)
@pytest.mark.parametrize("backward", [False, True])
async def test_rendered_all_pages_equal_the_records_path(filled, filters, backward):
    start, pages = None, 0
    while True:
        records = await filled.read_all(start=start, limit=4, backward=backward, filters=filters)
        rendered = await filled.read_all(start=start, limit=4, backward=backward, filters=filters, rendered=True)
        assert _as_rendered(rendered) == _as_records(records)
        assert (rendered.next, rendered.head) == (records.next, records.head)
        pages += 1
        if records.next is None:
            break
        start = records.next
    assert pages > 1


async def test_binary_payloads_come_back_as_base64(filled):
    events = _as_rendered(await filled.read_all(start=1, limit=5, rendered=True))
    assert "dataBase64" in events[2] and "data" not in events[2]
    assert "metadataBase64" in events[3] and "metadata" not in events[3]
    page = await filled.read_all(start=1, limit=1, rendered=True)
    assert b'"n":18446744073709551617,"d":0.1000000000000000000001,"e":1E2' in rendered_json(page.records[0])


async def test_a_rendered_page_stops_at_the_byte_budget(filled, monkeypatch):
    monkeypatch.setattr(storage_reads, "MAX_REPLY_BYTES", 600)
    page = await filled.read_all(start=1, limit=1000, rendered=True)
    assert 1 <= len(page.records) < 60 and page.next == rendered_position(page.records[-1]) + 1
    assert sum(map(rendered_size, page.records[:-1])) <= 600


@pytest.mark.parametrize("read", ["stream", "all", "all_by_type"])
async def test_a_corrupted_record_is_refused_by_rendered_reads(filled, read):
    conn = filled.storage._reader_conn()
    conn.execute("PRAGMA query_only=0")
    text = conn.execute("SELECT json FROM events WHERE position = 6").fetchone()[0]  # of STREAMS[1]
    conn.execute("UPDATE events SET json = ? WHERE position = 6", (text.replace(b'"data":{', b'"data":{"x":1,'),))
    conn.execute("PRAGMA query_only=1")
    with pytest.raises(CorruptRecord):
        if read == "stream":
            await filled.read_stream(STREAMS[1], limit=100, rendered=True)
        elif read == "all":
            await filled.read_all(limit=100, rendered=True)
        else:
            await filled.read_all(limit=100, filters=AllFilter(types=[TYPES[2]]), rendered=True)


async def test_reads_racing_a_close_are_answered_or_refused_never_left_waiting(tmp_path):
    import asyncio

    from evstore.node.errors import Unavailable
    from evstore.node.log import Log
    from evstore.node.storage import Storage

    log = Log(Storage(tmp_path / "data"))
    await log.open()
    await log.append("s", "any", [_event(0)])
    reads = [asyncio.ensure_future(log.read_stream("s", limit=10, rendered=True)) for _ in range(200)]
    closing = asyncio.ensure_future(log.close())
    reads += [asyncio.ensure_future(log.read_stream("s", limit=10)) for _ in range(50)]
    done = await asyncio.wait_for(asyncio.gather(*reads, return_exceptions=True), 20)
    await asyncio.wait_for(closing, 20)
    assert all(isinstance(r, Unavailable) or len(r.records) == 1 for r in done), done


async def test_a_rendered_event_reads_its_version_from_its_own_tail(log):
    tricky = b'{"x":",\\"version\\":7,\\"position\\":9,\\"created\\":\\"","version":5,"position":6}'
    for i in range(3):
        await log.append("tricky-1", "any", [NewEvent(uuid.uuid4().bytes, "T", tricky, tricky)])
    page = await log.read_stream("tricky-1", limit=10, rendered=True)
    assert [(rendered_version(e), rendered_position(e)) for e in page.records] == [(1, 1), (2, 2), (3, 3)]


async def test_a_byte_budget_that_falls_past_the_first_chunk_of_rows(log, monkeypatch):
    await log.append("many-1", "any", [NewEvent(uuid.uuid4().bytes, "T", b"[1]", b"{}") for _ in range(700)])
    sizes = list(map(rendered_size, (await log.read_stream("many-1", limit=1000, rendered=True)).records))
    budget = sum(sizes[:300]) + sizes[300] // 2
    monkeypatch.setattr(storage_reads, "MAX_REPLY_BYTES", budget)
    page = await log.read_stream("many-1", limit=1000, rendered=True)
    assert len(page.records) == 300 and page.next == 301
    assert list(map(rendered_version, page.records)) == list(range(1, 301))


@pytest.mark.parametrize("count", [0, 1, 2, 5])
async def test_a_reply_holds_its_head_the_events_and_its_tail(filled, count):
    page = await filled.read_all(limit=count or 1, rendered=True)
    events = page.records[:count]
    reply = orjson.loads(reply_with_events(b'{"h":1,"events":', events, b',"next":null}'))
    assert reply == {"h": 1, "events": [orjson.loads(rendered_json(e)) for e in events], "next": None}
