"""Events as the API returns them, as JSON: one record as a dict (`event_json`), or a page of stored rows
verified and rendered straight to JSON bytes in the reader thread (`render_rows`).

A page of 1,000 events is most of a read's cost, so `render_rows` builds each event's JSON with one bytes
join of the row's own values: `data` and `metadata` are spliced in as stored (the client's JSON text), the
stream and type names are encoded once per page, `created` once per group commit. It verifies each row's
checksum in the same pass, so every event a read returns is still checked.
"""
from __future__ import annotations

import base64
import binascii
import datetime
import functools
import operator
from typing import Iterable, Sequence

import crc32c
import orjson

from .errors import CorruptRecord
from .storage import CHECKSUM_LENGTHS, CHECKSUM_PLACE, DATA_BINARY, METADATA_BINARY, Record, record_from_row


@functools.lru_cache(maxsize=8192)
def rfc3339_micros(micros: int) -> str:
    # the events of one group commit share their `created`, so a page of reads formats few distinct times
    seconds, micro = divmod(micros, 1_000_000)
    return f"{_rfc3339_second(seconds)}.{micro:06d}Z"


@functools.lru_cache(maxsize=4096)
def _rfc3339_second(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


@functools.lru_cache(maxsize=8192)
def _created_json(micros: int) -> bytes:
    return rfc3339_micros(micros).encode()


def uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event_json(record: Record) -> dict:
    """The event as returned: `data` and `metadata` are the JSON text the client sent, embedded as it is;
    binary payloads come back as `dataBase64`/`metadataBase64`."""
    event = {"id": uuid_text(record.id), "stream": record.stream, "version": record.version,
             "position": record.position, "type": record.type}
    if record.flags & DATA_BINARY:
        event["dataBase64"] = base64.b64encode(record.data).decode("ascii")
    else:
        event["data"] = orjson.Fragment(record.data)
    if record.flags & METADATA_BINARY:
        event["metadataBase64"] = base64.b64encode(record.metadata).decode("ascii")
    else:
        event["metadata"] = orjson.Fragment(record.metadata)
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


_FLAG_BYTES = [bytes([flags]) for flags in range(4)]


def render_rows(rows: Iterable[Sequence], limit: int, max_bytes: int) -> tuple[list[RenderedEvent], bool]:
    """Rows of storage.RECORD_COLUMNS (a cursor: read only as far as needed), each verified against its
    checksum (CorruptRecord otherwise) and rendered, up to `limit` events or `max_bytes` of reply (at least
    one); True when it stopped there, so more may follow. The checksum is storage.Record.compute_checksum's,
    inlined: this loop is the read path."""
    crc, pack, pack_ints, join, hexlify = crc32c.crc32c, CHECKSUM_LENGTHS.pack, CHECKSUM_PLACE.pack, b"".join, binascii.hexlify
    names: dict[str, tuple[bytes, bytes]] = {}  # stream or type -> (UTF-8, JSON string)
    created_json = _created_json
    out: list[RenderedEvent] = []
    make = tuple.__new__
    size = 0
    for row in rows:
        position, stream, version, event_id, event_type, data, metadata, created, epoch, checksum, flags = row
        s = names.get(stream)
        if s is None:
            s = names[stream] = (stream.encode(), orjson.dumps(stream))
        t = names.get(event_type)
        if t is None:
            t = names[event_type] = (event_type.encode(), orjson.dumps(event_type))
        payload = crc(join((event_id, pack(len(s[0]), len(t[0]), len(data), len(metadata)), s[0], t[0], data,
                            metadata)))
        if flags:
            payload = crc(_FLAG_BYTES[flags], payload)
            json = orjson.dumps(event_json(record_from_row(row)))
        else:
            h = hexlify(event_id)  # joined pieces: a bytes % format of the same costs twice as much
            json = join((b'{"id":"', h[:8], b"-", h[8:12], b"-", h[12:16], b"-", h[16:20], b"-", h[20:],
                         b'","stream":', s[1], b',"version":', b"%d" % version, b',"position":', b"%d" % position,
                         b',"type":', t[1], b',"data":', data, b',"metadata":', metadata, b',"created":"',
                         created_json(created), b'"}'))
        if crc(pack_ints(position, version, created, epoch), payload) != checksum:
            raise CorruptRecord(position)
        size += len(json)
        if out and size > max_bytes:
            return out, True
        out.append(make(RenderedEvent, (position, version, json)))
        if len(out) == limit:
            return out, True
    return out, False


def events_array(events: Sequence[RenderedEvent]) -> bytes:
    return b"[" + b",".join([e[2] for e in events]) + b"]"
