"""The replication wire format: records as the leader stored them, packed back to back.

Each record is a fixed header (position, version, created, epoch, checksum, the four lengths, the id; in
format 2 also the content-type flags) followed by its stream, type, data and metadata bytes. The checksum
travels with the record, so the follower verifies exactly what the leader wrote.

Format 1 is what the previous release sends and reads. A batch whose records are all JSON (flags 0) is still
sent in format 1, so that during a rolling upgrade old and new nodes replicate from each other; only a batch
with a binary payload is sent in format 2, behind a magic that no format-1 payload can start with (its first
8 bytes, read as a format-1 position, would be 2^63 or more). A previous-release follower cannot store such
records and refuses them: binary payloads are for after the roll.
"""
from __future__ import annotations

import struct
from typing import Sequence

from ..errors import LogError
from ..storage import Record

MAGIC = b"EVR2\x00\x00\x00\xff"
_HEADER = struct.Struct("<QQqqIHHIIB16s")
_HEADER_V1 = struct.Struct("<QQqqIHHII16s")


class WireError(LogError):
    status, code = 400, "invalid_request"


def encode_records(records: Sequence[Record]) -> bytes:
    if not any(r.flags for r in records):
        return _encode_v1(records)
    parts: list[bytes] = [MAGIC]
    for r in records:
        stream, type_ = r.stream.encode(), r.type.encode()
        parts.append(_HEADER.pack(r.position, r.version, r.created, r.epoch, r.checksum, len(stream), len(type_),
                                  len(r.data), len(r.metadata), r.flags, r.id))
        parts += (stream, type_, r.data, r.metadata)
    return b"".join(parts)


def _encode_v1(records: Sequence[Record]) -> bytes:
    parts: list[bytes] = []
    for r in records:
        stream, type_ = r.stream.encode(), r.type.encode()
        parts.append(_HEADER_V1.pack(r.position, r.version, r.created, r.epoch, r.checksum, len(stream),
                                     len(type_), len(r.data), len(r.metadata), r.id))
        parts += (stream, type_, r.data, r.metadata)
    return b"".join(parts)


def decode_records(payload: bytes) -> list[Record]:
    records: list[Record] = []
    tagged = payload[:len(MAGIC)] == MAGIC
    header = _HEADER if tagged else _HEADER_V1
    view = memoryview(payload)
    offset, end = len(MAGIC) if tagged else 0, len(payload)
    flags = 0
    try:
        while offset < end:
            if tagged:
                (position, version, created, epoch, checksum, n_stream, n_type, n_data, n_meta, flags,
                 event_id) = header.unpack_from(view, offset)
            else:
                (position, version, created, epoch, checksum, n_stream, n_type, n_data, n_meta,
                 event_id) = header.unpack_from(view, offset)
            offset += header.size
            stream = bytes(view[offset:offset + n_stream]).decode()
            offset += n_stream
            type_ = bytes(view[offset:offset + n_type]).decode()
            offset += n_type
            data = bytes(view[offset:offset + n_data])
            offset += n_data
            metadata = bytes(view[offset:offset + n_meta])
            offset += n_meta
            if offset > end:
                raise WireError("truncated replication payload")
            records.append(Record(position, stream, version, event_id, type_, data, metadata, created, epoch,
                                  checksum, flags))
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(f"malformed replication payload: {exc}") from None
    return records
