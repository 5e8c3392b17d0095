"""The originator version mapping (client/eventsourcing/versions.py) beyond what the library's suites
use: aggregates whose first version is not 0 or 1, reads by a recorder that has not seen the stream,
a taken version, gaps, interleaved aggregates in one call, and reserved originator ids."""
from __future__ import annotations

import os
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError, ProgrammingError, StoredEvent
from eventsourcing.utils import Environment

from evstore.eventsourcing import Factory


@pytest.fixture
def factories():
    made = []

    def make() -> Factory:
        made.append(Factory(Environment(env={"EVSTORE_URL": os.environ["EVSTORE_URL"]})))
        return made[-1]

    yield make
    for factory in made:
        factory.close()


def events(originator_id, versions):
    return [StoredEvent(originator_id, v, "t:T", f"state{v}".encode()) for v in versions]


def test_an_aggregate_starting_at_version_5_reads_right_from_a_fresh_recorder(factories):
    writer, reader = factories().application_recorder(), factories().application_recorder()
    oid = uuid4()
    writer.insert_events(events(oid, [5, 6, 7]))
    writer.insert_events(events(oid, [8]))
    assert [e.originator_version for e in reader.select_events(oid, gt=6)] == [7, 8]
    assert [e.originator_version for e in reader.select_events(oid, gt=5, lte=7)] == [6, 7]
    assert [e.originator_version for e in reader.select_events(oid, lte=6, desc=True)] == [6, 5]
    assert [e.originator_version for e in reader.select_events(oid, lte=100, desc=True, limit=2)] == [8, 7]
    with pytest.raises(IntegrityError):
        reader.insert_events(events(oid, [8]))  # taken, learnt from the stream's first event
    assert reader.insert_events(events(oid, [9])) == [5]


def test_a_gap_or_repeat_in_one_call_and_interleaved_aggregates(factories):
    recorder = factories().application_recorder()
    a, b = uuid4(), uuid4()
    with pytest.raises(IntegrityError):
        recorder.insert_events(events(a, [1, 3]))
    with pytest.raises(IntegrityError):
        recorder.insert_events(events(a, [1, 1]))
    c = uuid4()
    recorder.insert_events(events(c, [2]))  # an aggregate's first event may have any version: it sets the base
    with pytest.raises(IntegrityError):
        recorder.insert_events(events(c, [1]))  # before the first
    with pytest.raises(IntegrityError, match="version 4 does not follow its last version 2"):
        recorder.insert_events(events(c, [4]))  # a gap after it (not "taken": nothing holds version 4)
    with pytest.raises(IntegrityError, match="version 2 is taken"):
        recorder.insert_events(events(c, [2]))
    interleaved = [events(a, [1])[0], events(b, [0])[0], events(a, [2])[0]]
    ids = recorder.insert_events(interleaved)
    assert sorted(ids) == [2, 3, 4] and ids[0] + 1 == ids[2]  # one append, each id the event's own position
    assert {n.id: (n.originator_id, n.originator_version) for n in recorder.select_notifications(2, 10)} == {
        ids[0]: (a, 1), ids[1]: (b, 0), ids[2]: (a, 2)}
    assert recorder.max_notification_id() == 4


def test_reserved_originator_ids(factories):
    factory = factories()
    factory.names.originator_id_type = "text"
    with pytest.raises(ProgrammingError):
        factory.application_recorder().insert_events(events("~tracking-app", [1]))


def test_with_a_stream_prefix_a_write_after_a_read_needs_no_extra_round_trip(factories):
    factory = Factory(Environment("Shop", {"EVSTORE_URL": os.environ["EVSTORE_URL"]}))
    try:
        assert factory.names.prefix == "Shop-"
        writer, reader = factory.application_recorder(), factories().application_recorder()
        oid = uuid4()
        writer.insert_events(events(oid, [0, 1]))  # 0-based
        fresh = factory.application_recorder()  # knows nothing of the stream until it reads it
        assert [e.originator_version for e in fresh.select_events(oid)] == [0, 1]
        calls = []
        append = fresh.store.append
        fresh.store.append = lambda appends: calls.append(appends) or append(appends)  # count requests
        assert fresh.insert_events(events(oid, [2])) == [3]
        assert len(calls) == 1  # the read taught it the base: no refused first try
        assert reader.select_events(oid) == []  # another prefix, another application
    finally:
        factory.close()
