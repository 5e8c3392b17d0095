"""Persistent subscriptions as stored in the log, so they replicate and survive restarts:
- `$subscriptions`: SubscriptionCreated / SubscriptionUpdated / SubscriptionDeleted (the definitions);
- `$sub-<name>-checkpoint`: Checkpoint events (`maxCount` 10);
- `$sub-<name>-parked`: Parked events (references to the parked event) and ParkedReplayed markers
  (`maxCount` 10,000).
Each definition carries an incarnation id, and checkpoints and parked entries name it, so a subscription
deleted and created again under the same name starts afresh.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson

from ...ids import uuid7_bytes
from ..errors import StreamDeleted, StreamNotFound
from ..log import Log, NewEvent
from ..storage import Record
from .settings import SubscriptionSettings, parse_settings

SUBSCRIPTIONS_STREAM = "$subscriptions"
CREATED, UPDATED, DELETED = "SubscriptionCreated", "SubscriptionUpdated", "SubscriptionDeleted"
CHECKPOINT_TYPE, PARKED_TYPE, REPLAYED_TYPE = "Checkpoint", "Parked", "ParkedReplayed"
CHECKPOINTS_KEPT = 10
PARKED_KEPT = 10_000
PAGE = 4096


def checkpoint_stream(name: str) -> str:
    return f"$sub-{name}-checkpoint"


def parked_stream(name: str) -> str:
    return f"$sub-{name}-parked"


@dataclass(slots=True)
class Definition:
    name: str
    settings: SubscriptionSettings
    incarnation: str
    start: int  # the checkpoint before anything is delivered (startFrom, resolved at creation)
    created: int  # microseconds


@dataclass(slots=True)
class ParkedEntry:
    parked_version: int  # its version in the parked stream
    stream: str
    version: int
    position: int
    event_id: str
    reason: str
    attempts: int
    parked_at: int  # microseconds


def system_event(event_type: str, data: dict) -> NewEvent:
    return NewEvent(uuid7_bytes()[0], event_type, orjson.dumps(data), b"{}", given_id=False)


def checkpoint_event(checkpoint: int, incarnation: str) -> NewEvent:
    return system_event(CHECKPOINT_TYPE, {"checkpoint": checkpoint, "incarnation": incarnation})


def parked_event(record: Record, *, reason: str, attempts: int, incarnation: str) -> NewEvent:
    return system_event(PARKED_TYPE, parked_data(record, reason=reason, attempts=attempts, incarnation=incarnation))


def parked_data(record: Record, *, reason: str, attempts: int, incarnation: str) -> dict:
    return {"incarnation": incarnation, "stream": record.stream, "version": record.version,
            "position": record.position, "id": str(uuid.UUID(bytes=record.id)), "reason": reason,
            "attempts": attempts}


def replayed_event(up_to: int, incarnation: str) -> NewEvent:
    return system_event(REPLAYED_TYPE, {"upTo": up_to, "incarnation": incarnation})


async def read_whole_stream(log_: Log, stream: str) -> list[Record]:
    """Every visible event of a (small, retention-bounded) system stream; [] when it does not exist."""
    records: list[Record] = []
    start: int | None = 1
    while start is not None:
        try:
            page = await log_.read_stream(stream, start=start, limit=PAGE)
        except (StreamNotFound, StreamDeleted):
            return records
        records.extend(page.records)
        start = page.next
    return records


async def load_definitions(log_: Log) -> tuple[dict[str, Definition], int]:
    """The definitions, folded from `$subscriptions`, and that stream's version."""
    definitions: dict[str, Definition] = {}
    records = await read_whole_stream(log_, SUBSCRIPTIONS_STREAM)
    for record in records:
        data = orjson.loads(record.data)
        name = data["name"]
        if record.type == CREATED:
            definitions[name] = Definition(name, parse_settings(data["settings"]), data["incarnation"],
                                           data["start"], record.created)
        elif record.type == UPDATED and name in definitions:
            definitions[name].settings = parse_settings(data["settings"])
        elif record.type == DELETED:
            definitions.pop(name, None)
    return definitions, records[-1].version if records else 0


async def load_checkpoint(log_: Log, definition: Definition) -> int:
    try:
        page = await log_.read_stream(checkpoint_stream(definition.name), start=None, limit=1, backward=True)
    except (StreamNotFound, StreamDeleted):
        return definition.start
    for record in page.records:
        data = orjson.loads(record.data)
        if data.get("incarnation") == definition.incarnation:
            return max(definition.start, int(data["checkpoint"]))
    return definition.start


async def load_parked(log_: Log, definition: Definition) -> tuple[list[ParkedEntry], frozenset[int]]:
    """The entries still parked (not replayed), and the keys of every event parked (replayed or not)."""
    entries: list[ParkedEntry] = []
    replayed = 0
    for record in await read_whole_stream(log_, parked_stream(definition.name)):
        data = orjson.loads(record.data)
        if data.get("incarnation") != definition.incarnation:
            continue
        if record.type == PARKED_TYPE:
            entries.append(ParkedEntry(record.version, data["stream"], data["version"], data["position"],
                                       data["id"], data["reason"], data["attempts"], record.created))
        elif record.type == REPLAYED_TYPE:
            replayed = max(replayed, data["upTo"])
    by_stream = definition.settings.stream is not None
    keys = frozenset(e.version if by_stream else e.position for e in entries)
    return [e for e in entries if e.parked_version > replayed], keys
