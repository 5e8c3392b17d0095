"""Read-ahead (node/readahead.py): a sequential reader's next page is read while it takes in the one it has, and
is answered from there only when a fresh read would return exactly the same page. Each case compares the
rendered read (which may come from the read-ahead) with the records path, which always reads afresh."""
from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from evstore.node import log as log_module
from evstore.node.errors import StreamDeleted, StreamNotFound
from evstore.node.eventjson import event_json, reply_with_events
from evstore.node.log import AllFilter, NewEvent
from evstore.node.storage import removal_count

USER_EVENTS = AllFilter(include_system=False)  # the API's default for $all


@pytest.fixture
def log(log):
    """The log, keeping pages read ahead long enough that a slow machine between two steps changes nothing."""
    log.read_ahead.keep_seconds = 60
    return log


def _events(n: int, data: bytes = b'{"n":1}') -> list[NewEvent]:
    return [NewEvent(uuid.uuid4().bytes, "Happened", data, b"{}") for _ in range(n)]


def _as_records(page) -> list:
    return orjson.loads(orjson.dumps([event_json(r) for r in page.records]))


def _as_rendered(page) -> list:
    return orjson.loads(reply_with_events(b"", page.records, b""))


async def _stream_page(log, stream, start, limit):
    """The rendered page, checked against a fresh read of the same page."""
    rendered = await log.read_stream(stream, start=start, limit=limit, rendered=True)
    fresh = await log.read_stream(stream, start=start, limit=limit)
    assert _as_rendered(rendered) == _as_records(fresh)
    assert (rendered.version, rendered.next) == (fresh.version, fresh.next)
    return rendered


async def _all_page(log, start, limit, filters=USER_EVENTS):
    rendered = await log.read_all(start=start, limit=limit, filters=filters, rendered=True)
    fresh = await log.read_all(start=start, limit=limit, filters=filters)
    assert _as_rendered(rendered) == _as_records(fresh)
    assert (rendered.head, rendered.next) == (fresh.head, fresh.next)
    return rendered


def _versions(page) -> list[int]:
    return [e["version"] for e in _as_rendered(page)]


def _positions(page) -> list[int]:
    return [e["position"] for e in _as_rendered(page)]


async def test_a_sequential_reader_takes_each_next_page_from_the_read_ahead(log):
    for _ in range(5):
        await log.append("s-1", "any", _events(20))
    for read in (lambda start: _stream_page(log, "s-1", start, 10), lambda start: _all_page(log, start, 10)):
        used = log.read_ahead.used
        start, pages = 1, 0
        while start is not None:
            page = await read(start)
            pages += 1
            start = page.next
        assert pages == 10
        assert log.read_ahead.used - used == 9, "every page after the first was read ahead"
    assert log.read_ahead.stale == 0


async def test_a_scavenge_after_the_read_ahead_is_seen(log):
    await log.append("s-1", "any", _events(30))
    await _all_page(log, 1, 10)  # positions 11-20 are read ahead
    await log.set_metadata("s-1", {"truncateBefore": 16})
    assert (await log.scavenge())["removed"] == 15
    page = await _all_page(log, 11, 10)
    assert _positions(page) == list(range(16, 26))
    assert log.read_ahead.stale == 1


async def test_a_truncate_before_after_the_read_ahead_is_seen(log):
    await log.append("s-1", "any", _events(30))
    await _stream_page(log, "s-1", 1, 10)
    await log.set_metadata("s-1", {"truncateBefore": 15})
    assert _versions(await _stream_page(log, "s-1", 11, 10)) == list(range(15, 25))
    assert log.read_ahead.stale == 1


async def test_max_count_moving_past_the_read_ahead_is_seen(log):
    await log.set_metadata("s-1", {"maxCount": 25})
    await log.append("s-1", "any", _events(30))  # versions 6-30 are visible
    assert _versions(await _stream_page(log, "s-1", 1, 5)) == list(range(6, 11))
    await log.append("s-1", "any", _events(10))  # now 16-40
    assert _versions(await _stream_page(log, "s-1", 11, 5)) == list(range(16, 21))
    assert log.read_ahead.stale == 1


async def test_a_hard_delete_after_the_read_ahead_is_seen(log):
    await log.append("s-1", "any", _events(30))
    await _stream_page(log, "s-1", 1, 10)
    await log.delete("s-1", "any", True)
    with pytest.raises(StreamDeleted):
        await log.read_stream("s-1", start=11, limit=10, rendered=True)


async def test_appends_after_a_read_ahead_of_the_last_page_are_seen(log):
    await log.append("s-1", "any", _events(25))
    await _all_page(log, 1, 10)
    await _all_page(log, 11, 10)  # from the read-ahead; positions 21-25 (the end) are read ahead
    await log.append("s-1", "any", _events(3))
    page = await _all_page(log, 21, 10)
    assert _positions(page) == list(range(21, 29)) and page.next is None
    stream_page = await _stream_page(log, "s-1", 1, 20)
    await log.append("s-1", "any", _events(3))
    assert _versions(await _stream_page(log, "s-1", stream_page.next, 20)) == list(range(21, 32))
    assert log.read_ahead.stale == 2


async def test_a_full_page_read_ahead_holds_after_appends_with_the_new_head(log):
    await log.append("s-1", "any", _events(25))
    await _all_page(log, 1, 10)  # 11-20 read ahead: a full page
    await _stream_page(log, "s-1", 1, 10)
    await log.append("s-1", "any", _events(5))
    page = await _all_page(log, 11, 10)
    assert _positions(page) == list(range(11, 21)) and (page.next, page.head) == (21, 30)
    stream_page = await _stream_page(log, "s-1", 11, 10)
    assert _versions(stream_page) == list(range(11, 21)) and (stream_page.next, stream_page.version) == (21, 30)
    assert (log.read_ahead.used, log.read_ahead.stale) == (2, 0)


async def test_no_read_ahead_for_a_stream_with_max_age_or_for_large_pages(log):
    await log.set_metadata("aged-1", {"maxAge": 3600})
    await log.append("aged-1", "any", _events(30))
    start = 1
    while start is not None:
        start = (await _stream_page(log, "aged-1", start, 10)).next
    large = b'{"s":"' + b"x" * 300_000 + b'"}'  # 4 of them pass the read-ahead's 1 MiB per page
    await log.append("large-1", "any", _events(12, large))
    start = 1
    while start is not None:
        start = (await _stream_page(log, "large-1", start, 4)).next
    assert (log.read_ahead.used, log.read_ahead.stale) == (0, 0)


async def test_closing_with_a_read_ahead_under_way_is_clean(tmp_path):
    from evstore.node.log import Log
    from evstore.node.storage import Storage
    log = Log(Storage(tmp_path / "data"))
    await log.open()
    await log.append("s-1", "any", _events(30))
    await log.read_all(start=1, limit=10, filters=USER_EVENTS, rendered=True)  # 11-20 under way
    assert log.read_ahead.pending == 1
    await log.close()
    assert log.read_ahead.pending == 0


async def test_the_read_ahead_keeps_few_small_pages_for_a_short_time():
    from evstore.node.readahead import MAX_PAGE_BYTES, AheadPage, PageBasis, ReadAhead
    basis = PageBasis(0, 1, True)

    async def page(size: int) -> AheadPage:
        return AheadPage("page", basis, size)

    ahead = ReadAhead(max_pages=2)
    never = asyncio.Event()
    ahead.start("a", never.wait)
    ahead.start("b", lambda: page(10))
    ahead.start("c", lambda: page(10))  # two are kept already: not read
    assert ahead.pending == 2 and await ahead.take("c") is None
    assert (await ahead.take("b")).size == 10 and await ahead.take("b") is None  # taken once
    ahead.start("large", lambda: page(MAX_PAGE_BYTES + 1))
    assert await ahead.take("large") is None
    ahead.clear()
    assert ahead.pending == 0
    expiring = ReadAhead(keep_seconds=0)
    expiring.start("a", lambda: page(10))
    assert await expiring.take("a") is None


async def test_pages_taken_from_the_read_ahead_are_counted_in_the_metrics(tmp_path):
    from evstore.node.log import Log
    from evstore.node.metrics import NodeMetrics
    from evstore.node.storage import Storage
    metrics = NodeMetrics()
    log = Log(Storage(tmp_path / "data"), metrics)
    log.read_ahead.keep_seconds = 60
    await log.open()
    try:
        await log.append("s-1", "any", _events(30))
        await _stream_page(log, "s-1", 1, 10)
        await _stream_page(log, "s-1", 11, 10)  # used
        await log.set_metadata("s-1", {"truncateBefore": 25})
        await _stream_page(log, "s-1", 21, 10)  # stale
    finally:
        await log.close()

    def sample(outcome: str) -> float:
        return metrics.registry.get_sample_value("evstore_read_ahead_pages_total", {"outcome": outcome})
    assert (sample("used"), sample("stale")) == (1, 1)


async def test_a_soft_delete_or_a_metadata_change_after_the_read_ahead_is_seen(log):
    await log.append("s-1", "any", _events(30))
    await log.append("s-2", "any", _events(30))
    await _stream_page(log, "s-1", 1, 10)
    await _stream_page(log, "s-2", 1, 10)
    await log.delete("s-1", "any", False)
    with pytest.raises(StreamNotFound):
        await log.read_stream("s-1", start=11, limit=10, rendered=True)
    await log.set_metadata("s-2", {"owner": "someone"})  # moves no version: the page is read afresh all the same
    assert _versions(await _stream_page(log, "s-2", 11, 10)) == list(range(11, 21))
    assert log.read_ahead.stale == 1


async def test_a_page_read_ahead_under_max_age_is_not_kept(log, monkeypatch):
    """maxAge set while the page after the first is being read ahead, and removed before it is asked for."""
    await log.append("s-1", "any", _events(30))
    storage_read = log.storage.read
    calls, gate, read_done = [], asyncio.Event(), asyncio.Event()

    async def second_read_held(fn, *args):  # the request's read passes; the read-ahead's waits for the gate
        calls.append(fn)
        if len(calls) == 2:
            await gate.wait()
        try:
            return await storage_read(fn, *args)
        finally:
            if len(calls) == 2:
                read_done.set()

    monkeypatch.setattr(log.storage, "read", second_read_held)
    await log.read_stream("s-1", start=1, limit=10, rendered=True)  # starts the read-ahead of 11
    await log.set_metadata("s-1", {"maxAge": 3600})
    gate.set()
    await asyncio.wait_for(read_done.wait(), 10)
    monkeypatch.setattr(log.storage, "read", storage_read)
    await log.set_metadata("s-1", {})
    assert _versions(await _stream_page(log, "s-1", 11, 10)) == list(range(11, 21))
    assert (log.read_ahead.used, log.read_ahead.stale) == (0, 0)


async def test_type_prefix_reads_are_not_read_ahead(log, monkeypatch):
    """Their plan depends on the types in the whole log: a new type above the head changes the page."""
    monkeypatch.setattr(log_module, "ALL_SCAN_WINDOW", 100)
    await log.append("x-1", "any", _events(10))
    for stream, n in (("x-1", 10), ("y-1", 70), ("x-1", 10), ("y-1", 10)):
        await log.append(stream, "any", [NewEvent(uuid.uuid4().bytes, "OrderPlaced", b"{}", b"{}") for _ in range(n)])
    orders = AllFilter(type_prefix="Order", stream_pattern="x-*", include_system=False)
    page = await _all_page(log, 1, 10, orders)
    await log.append("z-1", "any", [NewEvent(uuid.uuid4().bytes, "OrderShipped", b"{}", b"{}")])
    await _all_page(log, page.next, 10, orders)
    assert log.read_ahead.pending == 0 and (log.read_ahead.used, log.read_ahead.stale) == (0, 0)


async def test_truncations_and_scavenges_are_counted_as_removals(log):
    await log.append("s-1", "any", _events(30))
    assert await log.storage.read(removal_count) == 0
    await log.truncate_after(25)
    assert await log.storage.read(removal_count) == 1
    await log.truncate_after(25)  # removes nothing
    await log.set_metadata("s-1", {"truncateBefore": 5})
    await log.scavenge()
    assert await log.storage.read(removal_count) == 2
