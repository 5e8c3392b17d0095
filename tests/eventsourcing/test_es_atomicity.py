"""What the module promises beyond the library's suites: one insert_events over several aggregates is
one all-or-nothing append, a process recorder writes events and tracking record together, and two
processes (two factories, two clients) cannot both record the same upstream position."""
from __future__ import annotations

import os
import threading
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
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


def event(originator_id, version):
    return StoredEvent(originator_id, version, "t:T", b"\x00\xff")


def test_several_aggregates_in_one_call_are_all_or_nothing(factories):
    recorder = factories().application_recorder()
    a, b = uuid4(), uuid4()
    recorder.insert_events([event(a, 1)])
    with pytest.raises(IntegrityError):
        recorder.insert_events([event(b, 1), event(a, 1)])  # a's version 1 is taken: b is not written either
    assert recorder.select_events(b) == []
    assert recorder.insert_events([event(b, 1), event(a, 2)]) == [2, 3]
    assert recorder.max_notification_id() == 3


def test_events_and_tracking_record_are_written_together(factories):
    recorder = factories().process_recorder()
    a, b = uuid4(), uuid4()
    recorder.insert_events([event(a, 1)], tracking=Tracking("upstream", 5))
    with pytest.raises(IntegrityError):  # position 5 is processed: the events it would cause are not written
        recorder.insert_events([event(b, 1)], tracking=Tracking("upstream", 5))
    assert recorder.select_events(b) == []
    with pytest.raises(IntegrityError):  # the events conflict: the tracking record is not written
        recorder.insert_events([event(a, 1)], tracking=Tracking("upstream", 6))
    assert recorder.max_tracking_id("upstream") == 5
    assert [n.id for n in recorder.select_notifications(None, 10)] == [1]  # tracking records are no notifications


def test_two_processes_cannot_record_the_same_position(factories):
    first, second = factories().process_recorder(), factories().process_recorder()
    first.insert_events([], tracking=Tracking("upstream", 1))
    second.max_tracking_id("upstream")  # both know the tracking stream at position 1
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def process(recorder, originator_id):
        barrier.wait(timeout=10)
        try:
            recorder.insert_events([event(originator_id, 1)], tracking=Tracking("upstream", 2))
            outcomes.append("recorded")
        except IntegrityError:
            outcomes.append("refused")

    ids = [uuid4(), uuid4()]
    threads = [threading.Thread(target=process, args=(r, i)) for r, i in zip((first, second), ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["recorded", "refused"]
    assert sum(len(first.select_events(i)) for i in ids) == 1
    assert first.max_tracking_id("upstream") == second.max_tracking_id("upstream") == 2
