"""How snapshots live in the log: each one is an event of `$snapshot-<source>`, the snapshot's type as its type and
its data as sent (JSON text or bytes) as its data. The event's metadata is JSON of our own, `{"version": N,
"metadata": <the client's metadata as sent>}` (or `"metadataBase64"` for binary metadata), so the snapshot's
version, which need not follow the order snapshots are saved in, can be queried with json_extract. A snapshot
saved again at the same version replaces the earlier one: reads show the newest event per version."""
from __future__ import annotations

import base64
import sqlite3
from dataclasses import dataclass

import msgspec

from .storage import (DATA_BINARY, METADATA_BINARY, Record, snapshot_record_at_or_below,
                      snapshot_records_between, snapshot_window_start)

SNAPSHOT_PREFIX = "$snapshot-"


def snapshot_stream(source: str) -> str:
    return SNAPSHOT_PREFIX + source


@dataclass(slots=True)
class Snapshot:
    source: str
    version: int
    type: str
    data: bytes
    metadata: bytes
    flags: int  # DATA_BINARY | METADATA_BINARY: which of data and metadata are bytes rather than JSON text
    created: int
    position: int


def stored_metadata(version: int, metadata: bytes, flags: int) -> bytes:
    """The metadata of the event that holds a snapshot (see the module's docstring)."""
    if flags & METADATA_BINARY:
        return b'{"version":%d,"metadataBase64":"%s"}' % (version, base64.b64encode(metadata))
    return b'{"version":%d,"metadata":%s}' % (version, metadata)


class _Stored(msgspec.Struct):
    version: int
    metadata: msgspec.Raw = msgspec.Raw(b"{}")
    metadataBase64: str | None = None


_STORED = msgspec.json.Decoder(_Stored)


def snapshot_from_record(record: Record) -> Snapshot:
    stored = _STORED.decode(record.metadata)
    flags = record.flags & DATA_BINARY
    if stored.metadataBase64 is not None:
        metadata, flags = base64.b64decode(stored.metadataBase64), flags | METADATA_BINARY
    else:
        metadata = bytes(stored.metadata)
    return Snapshot(record.stream[len(SNAPSHOT_PREFIX):], stored.version, record.type, record.data, metadata, flags,
                    record.created, record.position)


def same_snapshot(found: Snapshot, event_type: str, data: bytes, metadata: bytes, flags: int) -> bool:
    return (found.type, found.data, found.metadata, found.flags) == (event_type, data, metadata, flags)


def newest_at_or_below(conn: sqlite3.Connection, stream: str, *, min_event_version: int, max_version: int,
                       visible: int | None) -> Snapshot | None:
    """The snapshot with the highest version at or below `max_version` among the stream's events from
    `min_event_version` on (retention hides those below) and at positions up to `visible` (None: all)."""
    record = snapshot_record_at_or_below(conn, stream, min_event_version=min_event_version, max_version=max_version,
                                         through=visible)
    return snapshot_from_record(record) if record is not None else None


def kept_window(conn: sqlite3.Connection, stream: str, *, version: int, floor: int, keep: int) -> int:
    """How many of the last events of the snapshot stream (at `version`, none below `floor` visible) hold the
    `keep` snapshot versions saved last (its maxCount): `keep`, and one more for each earlier event of a version
    saved again since (a replaced snapshot is not one of those kept)."""
    start = snapshot_window_start(conn, stream, min_event_version=max(1, floor), keep=keep)
    return max(keep, version - (start if start is not None else max(1, floor)) + 1)


def snapshots_between(conn: sqlite3.Connection, stream: str, *, min_event_version: int, min_version: int,
                      max_version: int, backward: bool, limit: int, visible: int | None) -> list[Snapshot]:
    """The snapshots with versions from `min_version` to `max_version` (the newest event of each version), in
    version order, at most `limit`."""
    return [snapshot_from_record(record) for record in snapshot_records_between(
        conn, stream, min_event_version=min_event_version, min_version=min_version, max_version=max_version,
        backward=backward, limit=limit, through=visible)]
