"""Events as the API returns them, as JSON: one record as a dict (`event_json`), or a page of stored reply texts
verified and taken as they are in the reader thread (`render_rows`).

A page of 1,000 events is most of a read's cost, so the writer stores each event's reply JSON beside its record
(node/replyjson.py) and a read splices those texts into the reply. Each text is checked against its own CRC32C
as it is read, so every event a read returns is still verified.
"""
from __future__ import annotations

import base64
import bisect
import operator
from itertools import accumulate
from typing import Sequence

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


# An event of a page read as the reply's JSON is the row of storage.REPLY_COLUMNS itself, (position, json,
# json_crc), as sqlite3 returns it: no object is made per event (wrapping each row cost ~0.19 µs, a tenth of a
# read). These read its parts.
RenderedEvent = tuple  # (position, json, json_crc)
rendered_position = operator.itemgetter(0)
rendered_json = operator.itemgetter(1)


def rendered_version(event: RenderedEvent) -> int:
    """The event's stream version, read from its text's tail (paging needs it of a page's last event only)."""
    text = event[1]
    tail = text.rindex(b',"position":', 0, text.rindex(b',"created":"'))
    return int(text[text.rindex(b',"version":', 0, tail) + 11:tail])


def rendered_size(event: RenderedEvent) -> int:
    return len(event[1])


_CHUNK = 256  # rows fetched at a time: a page stops at its byte budget without fetching much past it


def render_rows(rows, limit: int, max_bytes: int) -> tuple[list[RenderedEvent], bool]:
    """Rows of storage.REPLY_COLUMNS (a cursor: fetched only as far as needed), each text verified against its
    CRC32C (CorruptRecord otherwise), up to `limit` events or `max_bytes` of reply (at least one); True when it
    stopped there, so more may follow. Chunks of rows are checked and measured with C-level maps, not a Python
    loop per event: this is the read path."""
    out: list[RenderedEvent] = []
    size = 0
    while len(out) < limit:
        chunk = rows.fetchmany(min(_CHUNK, limit - len(out)))
        if not chunk:
            return out, False
        texts = [row[1] for row in chunk]
        if list(map(crc32c.crc32c, texts)) != [row[2] for row in chunk]:
            raise CorruptRecord(next(row[0] for row in chunk if crc32c.crc32c(row[1]) != row[2]))
        sizes = list(accumulate(map(len, texts), initial=size))
        if sizes[-1] > max_bytes:  # sizes[k]: the page's bytes with the chunk's first k rows
            fits = bisect.bisect_right(sizes, max_bytes) - 1
            out += chunk[:fits if out or fits else 1]
            return out, True
        size = sizes[-1]
        out += chunk
    return out, True


def reply_with_events(head: bytes, events: Sequence[RenderedEvent], tail: bytes) -> bytes:
    """`head`, the events' texts as a JSON array, then `tail`, made in one allocation: a page is up to
    MAX_REPLY_BYTES, and each further copy of it (a concatenation, a %-format) costs a fresh buffer."""
    if not events:
        return head + b"[]" + tail
    texts = list(map(rendered_json, events))
    texts[0] = head + b"[" + texts[0]
    texts[-1] = texts[-1] + b"]" + tail
    return b",".join(texts)
