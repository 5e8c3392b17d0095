"""eventsourcing.tests.application's ApplicationTestCase and ExampleApplicationTestCase (with
snapshotting) with PERSISTENCE_MODULE=evstore.eventsourcing, a fresh node per test."""
from __future__ import annotations

from eventsourcing.tests.application import ApplicationTestCase, ExampleApplicationTestCase


class TestApplicationWithEvstore(ApplicationTestCase):
    pass


class TestExampleApplicationWithEvstore(ExampleApplicationTestCase):
    expected_factory_topic = "evstore.eventsourcing.factory:Factory"


del ApplicationTestCase, ExampleApplicationTestCase
