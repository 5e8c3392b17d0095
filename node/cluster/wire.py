"""The replication wire format: records as the leader stored them, packed back to back.

Each record is a fixed header (position, version, created, epoch, checksum, the four lengths, the id; in
format 2 also the content-type flags) followed by its stream, type, data and metadata bytes. The checksum
travels with the record, so the follower verifies exactly what the leader wrote.

Format 3 ships the stored rows themselves (each with its reply text, the text's CRC and the payloads' spans
in it), so that a follower stores exactly the bytes the leader stored instead of rebuilding every text; it is
sent only to a follower that asks for it (`"rows": true` in its fetch), so older followers keep getting
formats 1 and 2, and every format decodes to stored rows.

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
from ..storage import STORED_COLUMNS, Record, records_of_rows, rows_of_records

MAGIC = b"EVR2\x00\x00\x00\xff"
ROWS_MAGIC = b"EVR3\x00\x00\x00\xff"
# position, version, created, epoch, checksum, text CRC, flags, data and metadata spans in the text, then the
# lengths of stream, type, text, binary data and binary metadata, then the id
_ROW = struct.Struct("<QQqqIIBIIIIHHIII16s")
_ROW_VALUES = len(STORED_COLUMNS.split(","))  # a stored row's values, in the order storage.STORED_COLUMNS names
_EMPTY = bytearray()  # the binary data and metadata columns of a JSON event (never changed: only bound)
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


def encode(rows: Sequence, *, as_rows: bool) -> bytes:
    """Stored rows (flat values) in format 3 for a follower that asked for rows, else in format 1 or 2."""
    return encode_rows(rows) if as_rows else encode_records(records_of_rows(rows))


def encode_rows(rows: Sequence) -> bytes:
    """Format 3: stored rows (flat values, storage.STORED_COLUMNS per record) as they are."""
    parts: list = [ROWS_MAGIC]
    add = parts.extend
    pack = _ROW.pack
    for i in range(0, len(rows), _ROW_VALUES):
        (position, version, checksum, text, text_crc, created, epoch, stream, event_id, type_, data, metadata, flags,
         data_at, data_len, meta_at, meta_len) = rows[i:i + _ROW_VALUES]
        stream_bytes, type_bytes = stream.encode(), type_.encode()
        add((pack(position, version, created, epoch, checksum, text_crc, flags, data_at, data_len, meta_at, meta_len,
                  len(stream_bytes), len(type_bytes), len(text), len(data), len(metadata), event_id),
             stream_bytes, type_bytes, text, data, metadata))
    return b"".join(parts)


def decode(payload: bytes) -> list:
    """A fetch reply of any format as stored rows (flat values), ready to verify and insert."""
    if payload[:len(ROWS_MAGIC)] == ROWS_MAGIC:
        return _decode_rows(payload)
    return rows_of_records(decode_records(payload))


def _decode_rows(payload: bytes) -> list:
    rows: list = []
    add = rows.extend
    view = memoryview(payload)
    offset, end = len(ROWS_MAGIC), len(payload)
    unpack, size = _ROW.unpack_from, _ROW.size
    try:
        while offset < end:
            (position, version, created, epoch, checksum, text_crc, flags, data_at, data_len, meta_at, meta_len,
             n_stream, n_type, n_text, n_data, n_meta, event_id) = unpack(view, offset)
            offset += size
            stream = str(view[offset:offset + n_stream], "utf-8")
            offset += n_stream
            type_ = str(view[offset:offset + n_type], "utf-8")
            offset += n_type
            # bytearrays: sqlite3 binds them directly (see storage.stored_row)
            text = bytearray(view[offset:offset + n_text])
            offset += n_text
            data = bytearray(view[offset:offset + n_data]) if n_data else _EMPTY
            offset += n_data
            metadata = bytearray(view[offset:offset + n_meta]) if n_meta else _EMPTY
            offset += n_meta
            if offset > end:
                raise WireError("truncated replication payload")
            add((position, version, checksum, text, text_crc, created, epoch, stream, bytearray(event_id), type_,
                 data, metadata, flags, data_at, data_len, meta_at, meta_len))
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(f"malformed replication payload: {exc}") from None
    return rows


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
