"""eventsourcing's own test suites against real nodes: each test gets a fresh node (the suites expect
notification ids from 1 and `max_notification_id()` None on an empty store). A node starts in about
a third of a second, so the whole directory stays well under a few minutes."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def evstore_node(node_factory, monkeypatch):
    for name in list(os.environ):
        if name.startswith("EVSTORE_") or name == "PERSISTENCE_MODULE":
            monkeypatch.delenv(name)
    node = node_factory()
    monkeypatch.setenv("EVSTORE_URL", node.url)
    monkeypatch.setenv("PERSISTENCE_MODULE", "evstore.eventsourcing")
    return node
