"""The replication wire format: records as the leader stored them, packed back to back.

A payload starts with a magic that names the format (a node of another format refuses it rather than
misreading it). Each record is a fixed header (position, version, created, epoch, checksum, the four
lengths, the content-type flags, the id) followed by its stream, type, data and metadata bytes. The checksum
travels with the record, so the follower verifies exactly what the leader wrote.
"""
from __future__ import annotations

import struct
from typing import Sequence

from ..errors import LogError
from ..storage import Record

MAGIC = b"EVR2"
_HEADER = struct.Struct("<QQqqIHHIIB16s")


class WireError(LogError):
    status, code = 400, "invalid_request"


def encode_records(records: Sequence[Record]) -> bytes:
    parts: list[bytes] = [MAGIC]
    for r in records:
        stream, type_ = r.stream.encode(), r.type.encode()
        parts.append(_HEADER.pack(r.position, r.version, r.created, r.epoch, r.checksum, len(stream), len(type_),
                                  len(r.data), len(r.metadata), r.flags, r.id))
        parts += (stream, type_, r.data, r.metadata)
    return b"".join(parts)


def decode_records(payload: bytes) -> list[Record]:
    records: list[Record] = []
    if payload[:len(MAGIC)] != MAGIC:
        raise WireError("not a replication payload of this format (a node of another version?)")
    view = memoryview(payload)
    offset, end = len(MAGIC), len(payload)
    try:
        while offset < end:
            (position, version, created, epoch, checksum, n_stream, n_type, n_data, n_meta, flags,
             event_id) = _HEADER.unpack_from(view, offset)
            offset += _HEADER.size
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
