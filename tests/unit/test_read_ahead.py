"""Read-ahead (node/readahead.py): a sequential reader's next page is read while it takes in the one it has, and
is answered from there only when a fresh read would return exactly the same page. Each case compares the
rendered read (which may come from the read-ahead) with the records path, which always reads afresh."""
from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from evstore.node.errors import StreamDeleted
from evstore.node.eventjson import event_json, reply_with_events
from evstore.node.log import AllFilter, NewEvent

USER_EVENTS = AllFilter(include_system=False)  # the API's default for $all


def _events(n: int, data: bytes = b'{"n":1}') -> list[NewEvent]:
    return [NewEvent(uuid.uuid4().bytes, "Happened", data, b"{}") for _ in range(n)]


def _as_records(page) -> list:
    return orjson.loads(orjson.dumps([event_json(r) for r in page.records]))


def _as_rendered(page) -> list:
    return orjson.loads(reply_with_events(b"", page.records, b""))


async def _stream_page(log, stream, start, limit):
    """The rendered page, checked against a fresh read of the same page."""
    rendered = await log.read_stream(stream, start, limit, False, rendered=True)
    fresh = await log.read_stream(stream, start, limit, False)
    assert _as_rendered(rendered) == _as_records(fresh)
    assert (rendered.version, rendered.next) == (fresh.version, fresh.next)
    return rendered


async def _all_page(log, start, limit):
    rendered = await log.read_all(start, limit, False, USER_EVENTS, rendered=True)
    fresh = await log.read_all(start, limit, False, USER_EVENTS)
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
        await log.read_stream("s-1", 11, 10, False, rendered=True)


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
    await log.read_all(1, 10, False, USER_EVENTS, rendered=True)  # 11-20 under way
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
