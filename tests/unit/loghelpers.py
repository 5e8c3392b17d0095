"""Helpers for the tests of the log on a real SQLite file (the `log` fixture is in this directory's conftest)."""
from __future__ import annotations

import uuid

import orjson

from evstore.node.log import NewEvent


def ev(event_type: str = "Happened", data=None, event_id: bytes | None = None) -> NewEvent:
    return NewEvent(event_id or uuid.uuid4().bytes, event_type, orjson.dumps(data if data is not None else {}),
                    b"{}")
