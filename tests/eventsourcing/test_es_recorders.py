"""The recorder test cases shipped in eventsourcing.tests.persistence, subclassed as eventsourcing's own
tests/persistence_tests/test_sqlite.py does, against a fresh real node per test."""
from __future__ import annotations

import os
from uuid import uuid4

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.tests.persistence import (AggregateRecorderTestCase, ApplicationRecorderTestCase,
                                             InfrastructureFactoryTestCase, NonInterleavingNotificationIDsBaseCase,
                                             ProcessRecorderTestCase, TrackingRecorderTestCase)
from eventsourcing.utils import Environment

from evstore.eventsourcing import (EvstoreAggregateRecorder, EvstoreApplicationRecorder, EvstoreProcessRecorder,
                                   EvstoreTrackingRecorder, Factory)


class FactoryPerTest:
    """Recorders from a factory on this test's node (EVSTORE_URL, set by the autouse fixture)."""

    id_type = "uuid"

    def factory(self) -> Factory:
        factory = Factory(Environment(env={"EVSTORE_URL": os.environ["EVSTORE_URL"],
                                           "ORIGINATOR_ID_TYPE": self.id_type}))
        self.addCleanup(factory.close)  # type: ignore[attr-defined]
        return factory


class TextIds(FactoryPerTest):
    id_type = "text"

    def new_originator_id(self) -> str:
        return f"text-{uuid4()}"


class TestAggregateRecorder(FactoryPerTest, AggregateRecorderTestCase):
    def create_recorder(self) -> EvstoreAggregateRecorder:
        return self.factory().aggregate_recorder()


class TestAggregateRecorderWithTextIds(TextIds, TestAggregateRecorder):
    pass


class TestAggregateRecorderZeroBased(TestAggregateRecorder):
    INITIAL_VERSION = 0


class TestApplicationRecorder(FactoryPerTest, ApplicationRecorderTestCase[EvstoreApplicationRecorder]):
    def create_recorder(self) -> EvstoreApplicationRecorder:
        return self.factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestApplicationRecorderWithTextIds(TextIds, TestApplicationRecorder):
    pass


class TestApplicationRecorderZeroBased(TestApplicationRecorder):
    INITIAL_VERSION = 0


class TestTrackingRecorder(FactoryPerTest, TrackingRecorderTestCase):
    def create_recorder(self) -> EvstoreTrackingRecorder:
        return self.factory().tracking_recorder()


class TestProcessRecorder(FactoryPerTest, ProcessRecorderTestCase):
    def create_recorder(self) -> EvstoreProcessRecorder:
        return self.factory().process_recorder()


class TestProcessRecorderWithTextIds(TextIds, TestProcessRecorder):
    pass


class TestNonInterleavingNotificationIDs(FactoryPerTest, NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> EvstoreApplicationRecorder:
        return self.factory().application_recorder()


class TestNonInterleavingNotificationIDsWithTextIds(TextIds, TestNonInterleavingNotificationIDs):
    pass


class MyTrackingRecorder(EvstoreTrackingRecorder):
    pass


class TestInfrastructureFactory(InfrastructureFactoryTestCase[Factory]):
    def setUp(self) -> None:
        self.env = Environment("TestCase", {InfrastructureFactory.PERSISTENCE_MODULE: "evstore.eventsourcing",
                                            Factory.EVSTORE_URL: os.environ["EVSTORE_URL"]})
        super().setUp()

    def expected_factory_class(self) -> type[Factory]:
        return Factory

    def expected_aggregate_recorder_class(self) -> type[EvstoreAggregateRecorder]:
        return EvstoreAggregateRecorder

    def expected_application_recorder_class(self) -> type[EvstoreApplicationRecorder]:
        return EvstoreApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[EvstoreTrackingRecorder]:
        return EvstoreTrackingRecorder

    def tracking_recorder_subclass(self) -> type[EvstoreTrackingRecorder]:
        return MyTrackingRecorder

    def expected_process_recorder_class(self) -> type[EvstoreProcessRecorder]:
        return EvstoreProcessRecorder


del AggregateRecorderTestCase, ApplicationRecorderTestCase, InfrastructureFactoryTestCase, \
    NonInterleavingNotificationIDsBaseCase, ProcessRecorderTestCase, TrackingRecorderTestCase
