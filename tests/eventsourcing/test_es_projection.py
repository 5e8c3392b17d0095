"""The event-sourced projection cases shipped with eventsourcing 9.5 (eventsourcing.tests.projection),
with a read model kept in evstore: counters appended atomically with their tracking record. (The DCB
"tagged decision" cases need a DCB recorder: a later issue.)"""
from __future__ import annotations

import os

from eventsourcing.persistence import Tracking
from eventsourcing.tests.projection import (AggregateEventCountersProjectionTestCase, EventCountersView,
                                            EventCountersViewTestCase, EventSourcedProjectionTestCase)

from evstore.eventsourcing import Append, EvstoreTrackingRecorder, Factory

CREATED = "CreatedEventCounted"
SUBSEQUENT = "SubsequentEventCounted"


class EvstoreEventCountersView(EvstoreTrackingRecorder, EventCountersView):
    """Each count is an event of `<prefix>counters`, appended with the tracking record in one
    multi-stream append: a position is counted once or not at all."""

    def _counters(self) -> str:
        return f"{self.names.prefix}counters"

    def _count(self, type: str) -> int:
        return sum(1 for e in self.store.read_stream(self._counters()) if e["type"] == type)

    def _increment(self, type: str, tracking: Tracking) -> None:
        self.record(tracking, [Append(self._counters(), "any", [{"type": type, "data": {}}])])

    def get_created_event_counter(self) -> int:
        return self._count(CREATED)

    def get_subsequent_event_counter(self) -> int:
        return self._count(SUBSEQUENT)

    def incr_created_event_counter(self, tracking: Tracking) -> None:
        self._increment(CREATED, tracking)

    def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        self._increment(SUBSEQUENT, tracking)


class TestEventCountersView(EventCountersViewTestCase):
    def construct_event_counters_view(self) -> EvstoreEventCountersView:
        factory = Factory.construct({"PERSISTENCE_MODULE": "evstore.eventsourcing",
                                     "EVSTORE_URL": os.environ["EVSTORE_URL"]})
        self.addCleanup(factory.close)
        return factory.tracking_recorder(EvstoreEventCountersView)


class TestAggregateEventCountersProjection(AggregateEventCountersProjectionTestCase):
    view_class = EvstoreEventCountersView


class TestEventSourcedProjection(EventSourcedProjectionTestCase):
    pass


del AggregateEventCountersProjectionTestCase, EventCountersViewTestCase, EventSourcedProjectionTestCase
