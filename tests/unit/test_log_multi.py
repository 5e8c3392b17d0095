"""Log.append_many on a real SQLite file: all or nothing, contiguous positions, every failing stream named,
idempotent as a whole by event ids."""
from __future__ import annotations

import asyncio

import pytest

from evstore.node.errors import DuplicateEventId, StreamDeleted, WrongExpectedVersion
from evstore.node.log import StreamAppend
from loghelpers import ev


async def test_appends_to_several_streams_take_contiguous_positions(log):
    await log.append("other", "any", [ev()])
    done = await log.append_many([StreamAppend("a", "no_stream", [ev(), ev()]), StreamAppend("b", "any", [ev()])])
    assert [(r.stream, r.from_version, r.version, r.position) for r in done.results] == [
        ("a", 1, 2, 3), ("b", 1, 1, 4)]
    assert done.position == 4
    page = await log.read_all(limit=100)
    assert [(r.stream, r.version, r.position) for r in page.records] == [
        ("other", 1, 1), ("a", 1, 2), ("a", 2, 3), ("b", 1, 4)]
    # one group commit: every record of the write shares its `created`
    assert len({r.created for r in page.records[1:]}) == 1


async def test_one_failed_check_rejects_all_and_names_every_failing_stream(log):
    await log.append("a", "any", [ev()])
    await log.append("c", "any", [ev(), ev()])
    with pytest.raises(WrongExpectedVersion) as caught:
        await log.append_many([StreamAppend("a", 5, [ev()]), StreamAppend("b", "any", [ev()]),
                               StreamAppend("c", "no_stream", [ev()])])
    details = caught.value.details
    assert details["failures"] == [{"stream": "a", "expectedVersion": 5, "currentVersion": 1},
                                   {"stream": "c", "expectedVersion": "no_stream", "currentVersion": 2}]
    assert (details["stream"], details["expectedVersion"], details["currentVersion"]) == ("a", 5, 1)
    assert (await log.read_all(limit=100)).head == 3  # nothing written
    assert (await log.append("b", "no_stream", [ev()])).position == 4  # no gap either


async def test_a_hard_deleted_stream_rejects_the_whole_request(log):
    await log.append("gone", "any", [ev()])
    await log.delete("gone", "any", hard=True)
    head = log.head
    with pytest.raises(StreamDeleted):
        await log.append_many([StreamAppend("fine", "any", [ev()]), StreamAppend("gone", "any", [ev()])])
    assert log.head == head


async def test_the_same_request_again_gets_the_original_reply_and_writes_nothing(log):
    request = [StreamAppend("a", "no_stream", [ev(), ev()]), StreamAppend("b", "no_stream", [ev()])]
    first = await log.append_many(request)
    await log.append("a", "any", [ev()])  # the expected versions no longer hold: a retry still succeeds
    again = await log.append_many(request)
    assert again == first
    assert log.head == 4


async def test_a_partial_overlap_of_ids_is_a_conflict(log):
    a_event, b_event = ev(), ev()
    await log.append_many([StreamAppend("a", "any", [a_event]), StreamAppend("b", "any", [b_event])])
    head = log.head
    with pytest.raises(DuplicateEventId):
        await log.append_many([StreamAppend("a", "any", [a_event]), StreamAppend("b", "any", [ev()])])
    with pytest.raises(DuplicateEventId):  # a known id beside a new one in one entry
        await log.append_many([StreamAppend("a", "any", [a_event, ev()])])
    with pytest.raises(DuplicateEventId):  # the same ids with other content
        await log.append_many([StreamAppend("a", "any", [a_event]),
                               StreamAppend("b", "any", [ev("Other", event_id=b_event.id)])])
    assert log.head == head


async def test_a_stream_named_twice_gets_its_entries_in_order(log):
    await log.append("a", "any", [ev()])
    done = await log.append_many([StreamAppend("a", 1, [ev(), ev()]), StreamAppend("b", "any", [ev()]),
                                  StreamAppend("a", 3, [ev()])])
    assert [(r.stream, r.from_version, r.version, r.position) for r in done.results] == [
        ("a", 2, 3, 3), ("b", 1, 1, 4), ("a", 4, 4, 5)]
    with pytest.raises(WrongExpectedVersion) as caught:  # checked as the entries before leave the stream
        await log.append_many([StreamAppend("c", "no_stream", [ev()]), StreamAppend("c", "no_stream", [ev()])])
    # the 409 names the version the stream has committed (0), not the 1 an entry of the refused request would leave
    assert caught.value.details["failures"] == [{"stream": "c", "expectedVersion": "no_stream", "currentVersion": 0}]
    await log.append("d", "any", [ev(), ev()])
    with pytest.raises(WrongExpectedVersion) as caught:  # a failing entry adds nothing to the checks after it
        await log.append_many([StreamAppend("d", 5, [ev()]), StreamAppend("d", 2, [ev()]),
                               StreamAppend("d", 3, [ev()])])
    assert [(f["expectedVersion"], f["currentVersion"]) for f in caught.value.details["failures"]] == [(5, 2)]
    again = await log.append_many([StreamAppend("c", "no_stream", [ev()]), StreamAppend("c", "stream_exists", [ev()])])
    assert [r.version for r in again.results] == [1, 2]


async def test_concurrent_multi_appends_interleave_whole(log):
    requests = [[StreamAppend(f"s{i}", "any", [ev()]), StreamAppend(f"t{i}", "any", [ev(), ev()])]
                for i in range(30)]
    replies = await asyncio.gather(*(log.append_many(r) for r in requests))
    for reply in replies:
        positions = [p for r in reply.results for p in range(r.position - (r.version - r.from_version), r.position + 1)]
        assert positions == list(range(positions[0], positions[0] + 3))
