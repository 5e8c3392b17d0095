"""Events as the API returns them, as JSON: one record as a dict (`event_json`), or a page of stored reply texts
verified and taken as they are in the reader thread (`render_rows`).

A page of 1,000 events is most of a read's cost, so the writer stores each event's reply JSON beside its record
(node/replyjson.py) and a read splices those texts into the reply. Each text is checked against its own CRC32C
as it is read, so every event a read returns is still verified.
"""
from __future__ import annotations

import base64
import operator
from typing import Iterable, Sequence

import crc32c
import orjson

from .errors import CorruptRecord
from .replyjson import rfc3339_micros, uuid_text  # noqa: F401 (the names shape.py gives the API)
from .storage import DATA_BINARY, METADATA_BINARY, Record


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


class RenderedEvent(tuple):
    """One event of a page as the JSON bytes of the reply, with what paging needs of it: (position, version,
    json). A tuple made by tuple.__new__, because a page makes 1,000 of them and a class's __init__ costs
    a Python call each."""
    __slots__ = ()
    position = property(operator.itemgetter(0))
    version = property(operator.itemgetter(1))
    json = property(operator.itemgetter(2))

    def __new__(cls, position: int, version: int, json: bytes) -> "RenderedEvent":
        return tuple.__new__(cls, (position, version, json))

    @property
    def size(self) -> int:
        return len(self[2])


def render_rows(rows: Iterable[Sequence], limit: int, max_bytes: int) -> tuple[list[RenderedEvent], bool]:
    """Rows of storage.REPLY_COLUMNS (a cursor: read only as far as needed), each text verified against its
    CRC32C (CorruptRecord otherwise), up to `limit` events or `max_bytes` of reply (at least one); True when it
    stopped there, so more may follow."""
    crc = crc32c.crc32c
    out: list[RenderedEvent] = []
    add, make = out.append, tuple.__new__
    size = 0
    for position, version, text, text_crc in rows:
        if crc(text) != text_crc:
            raise CorruptRecord(position)
        size += len(text)
        if out and size > max_bytes:
            return out, True
        add(make(RenderedEvent, (position, version, text)))
        if len(out) == limit:
            return out, True
    return out, False


def events_array(events: Sequence[RenderedEvent]) -> bytes:
    return b"[" + b",".join([e[2] for e in events]) + b"]"
