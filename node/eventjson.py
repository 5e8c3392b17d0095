"""Events as the API returns them, as JSON: one record as a dict (`event_json`), or a page of stored reply texts
(storage.render_rows, verified in the reader thread) spliced into one reply (`reply_with_events`).

A page of 1,000 events is most of a read's cost, so the writer stores each event's reply JSON beside its record
(node/replyjson.py) and a read splices those texts into the reply. Each text is checked against its own CRC32C
as it is read, so every event a read returns is still verified.
"""
from __future__ import annotations

import base64
from typing import Sequence

import orjson

from .replyjson import rfc3339_micros, uuid_text  # noqa: F401 (the names shape.py gives the API)
from .storage import DATA_BINARY, METADATA_BINARY, Record, RenderedEvent, rendered_json


def event_json(record: Record) -> dict:
    """The event as returned (the fields of a stored reply text, in its order): `data` and `metadata` are the JSON
    text the client sent, embedded as it is; binary payloads come back as `dataBase64`/`metadataBase64`."""
    event = {"id": uuid_text(record.id), "stream": record.stream, "type": record.type}
    if record.flags & DATA_BINARY:
        event["dataBase64"] = base64.b64encode(record.data).decode("ascii")
    else:
        event["data"] = orjson.Fragment(record.data)
    if record.flags & METADATA_BINARY:
        event["metadataBase64"] = base64.b64encode(record.metadata).decode("ascii")
    else:
        event["metadata"] = orjson.Fragment(record.metadata)
    event["version"] = record.version
    event["position"] = record.position
    event["created"] = rfc3339_micros(record.created)
    return event


def reply_with_events(head: bytes, events: Sequence[RenderedEvent], tail: bytes) -> bytes:
    """`head`, the events' texts as a JSON array, then `tail`, made in one allocation: a page is up to
    MAX_REPLY_BYTES, and each further copy of it (a concatenation, a %-format) costs a fresh buffer."""
    if not events:
        return head + b"[]" + tail
    texts = list(map(rendered_json, events))
    texts[0] = head + b"[" + texts[0]
    texts[-1] = texts[-1] + b"]" + tail
    return b",".join(texts)
