"""The snapshot recorder on the snapshots API: the selections eventsourcing makes, binary state, and
snapshots never in the application's notification log."""
from __future__ import annotations

import os
from uuid import uuid4

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import Environment

from evstore.eventsourcing import Factory


def test_snapshot_selections_and_notification_log():
    factory = Factory(Environment("Bank", {"EVSTORE_URL": os.environ["EVSTORE_URL"]}))
    try:
        snapshots, events = factory.aggregate_recorder("snapshots"), factory.application_recorder()
        account = uuid4()
        assert snapshots.select_events(account, desc=True, limit=1) == []
        taken = [StoredEvent(account, version, "bank:Account.Snapshot", bytes([version, 0, 255]))
                 for version in (2, 5, 9)]
        snapshots.insert_events(taken)
        assert snapshots.select_events(account) == taken
        assert snapshots.select_events(account, desc=True, limit=1) == [taken[2]]
        assert snapshots.select_events(account, lte=8, desc=True, limit=1) == [taken[1]]
        assert snapshots.select_events(account, lte=1, desc=True, limit=1) == []
        assert snapshots.select_events(account, gt=2, lte=9) == taken[1:]
        assert snapshots.select_events(account, gt=2, desc=True, limit=1) == [taken[2]]
        assert snapshots.select_events(account, desc=True) == taken[::-1]
        assert snapshots.select_events(uuid4()) == []
        assert events.max_notification_id() is None and events.select_notifications(None, 10) == []
    finally:
        factory.close()
