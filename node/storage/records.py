"""The record format: an event's fields, its checksum (CRC32C over what its writer decided, then its place in the
log), and the stored row (STORED_COLUMNS) the writer inserts and replication ships as it is."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

import crc32c

from ...ids import uuid_texts
from ..errors import CorruptRecord
from ..replyjson import DATA_BINARY, METADATA_BINARY, json_head, json_name, record_json

# A row as the writer inserts it: first what depends on the event's place in the log, then the event's own values
# in the order seal_payloads prepares them (NewEvent.fixed), so that the writer adds each row in two pieces.
STORED_COLUMNS = ("position, version, checksum, json, json_crc, created, epoch, stream, "
                  "id, type, data, metadata, flags, data_at, data_len, meta_at, meta_len")
# where each value sits in a stored row
(AT_POSITION, AT_VERSION, AT_CHECKSUM, AT_TEXT, AT_TEXT_CRC, AT_CREATED, AT_EPOCH, AT_STREAM, AT_ID, AT_TYPE,
 AT_DATA, AT_METADATA, AT_FLAGS, AT_DATA_AT, AT_DATA_LEN, AT_META_AT, AT_META_LEN) = range(17)
ROW_WIDTH = 17  # values of one stored row
CHECKSUM_PLACE = struct.Struct("<QQqq")  # a record's place (position, version, created, epoch), after its payload
EMPTY_PAYLOAD = bytearray()  # the data or metadata column of a JSON payload (it lives in `json`)
CHECKSUM_LENGTHS = struct.Struct("<IIII")  # the lengths of stream, type, data and metadata, after the id


@dataclass(slots=True)
class Record:
    position: int
    stream: str
    version: int
    id: bytes
    type: str
    data: bytes
    metadata: bytes
    created: int  # microseconds since the Unix epoch
    epoch: int
    checksum: int = 0
    flags: int = 0  # DATA_BINARY | METADATA_BINARY: which payloads are bytes rather than JSON text

    def compute_checksum(self) -> int:
        return sealed_checksum(payload_checksum(self.id, self.stream, self.type, self.data, self.metadata,
                                                self.flags),
                               self.position, self.version, self.created, self.epoch)

    def verified(self) -> "Record":
        if self.compute_checksum() != self.checksum:
            raise CorruptRecord(self.position)
        return self

    def row(self) -> tuple:
        return (self.position, self.stream, self.version, self.id, self.type, self.data, self.metadata,
                self.created, self.epoch, self.checksum, self.flags)


FLAG_BYTES = [bytes([flags]) for flags in range(4)]


def payload_checksum(event_id: bytes, stream: str, event_type: str, data: bytes, metadata: bytes,
                     flags: int = 0) -> int:
    """CRC32C of what the writer of an event decides: its id, stream, type, data and metadata (after their
    four lengths), then its content-type byte when it is not 0 (JSON data and metadata): so the records of
    format 1, which were all JSON, keep their checksums. The log computes it before the event reaches the
    writer thread, to keep that path short."""
    stream_bytes, type_bytes = stream.encode(), event_type.encode()
    lengths = CHECKSUM_LENGTHS.pack(len(stream_bytes), len(type_bytes), len(data), len(metadata))
    crc = crc32c.crc32c(b"".join((event_id, lengths, stream_bytes, type_bytes, data, metadata)))
    return crc32c.crc32c(FLAG_BYTES[flags], crc) if flags else crc


def seal_payloads(stream: str, events: Sequence) -> int:
    """Set `payload_crc` (see payload_checksum) on each event of one stream, its id's text if the caller had none
    (`id_text`), the head of its reply text (`head`, see replyjson.json_head), and the stored row's values that do
    not depend on the event's place (`fixed`, from the id to the payloads' spans in the text: see STORED_COLUMNS);
    return their data and metadata bytes. One pass
    with the stream encoded once, off the writer thread: appends of 100 events run this for every event."""
    stream_bytes = stream.encode()
    stream_length = len(stream_bytes)
    stream_json = json_name(stream)
    after_id = b'","stream":' + stream_json + b',"type":'
    data_at = len(b'{"id":"') + 36 + len(after_id) + len(b',"data":')  # plus the type's length
    type_names: dict[str, tuple[bytes, bytes, int]] = {}
    pack, crc, join = CHECKSUM_LENGTHS.pack, crc32c.crc32c, b"".join
    join_into_bytearray = EMPTY_PAYLOAD.join  # the head as the bytearray the writer extends, without a copy
    untold = [e for e in events if not e.id_text]  # node-made ids: their texts made together (see uuid_texts)
    if untold:
        for e, id_text in zip(untold, uuid_texts([e.id for e in untold])):
            e.id_text = id_text
    size = 0
    for e in events:
        event_id, event_type, data, metadata, flags = e.id, e.type, e.data, e.metadata, e.flags
        names = type_names.get(event_type)
        if names is None:
            type_json = json_name(event_type)
            names = type_names[event_type] = (event_type.encode(), type_json + b',"data":',
                                              data_at + len(type_json))
        type_bytes, type_and_data_key, at = names
        e.payload_crc = crc(join((event_id, pack(stream_length, len(type_bytes), len(data), len(metadata)),
                                  stream_bytes, type_bytes, data, metadata)))
        # what the writer's row takes as it is (bytearrays: sqlite3 binds them without an adapter lookup)
        if flags:
            e.payload_crc = crc(FLAG_BYTES[flags], e.payload_crc)
            text, *spans = json_head(event_id, stream_json, json_name(event_type), data, metadata, flags)
            e.head = bytearray(text)
            e.fixed = (bytearray(event_id), event_type, bytearray(data) if flags & DATA_BINARY else EMPTY_PAYLOAD,
                       bytearray(metadata) if flags & METADATA_BINARY else EMPTY_PAYLOAD, flags, *spans)
        else:  # json_head's text, built in one join (the common case, once per event)
            e.head = join_into_bytearray((b'{"id":"', e.id_text, after_id, type_and_data_key, data,
                                          b',"metadata":', metadata, b',"version":'))
            e.fixed = (bytearray(event_id), event_type, EMPTY_PAYLOAD, EMPTY_PAYLOAD, 0, at, len(data),
                       at + len(data) + 12, len(metadata))
        size += len(data) + len(metadata)
    return size


def sealed_checksum(payload_crc: int, position: int, version: int, created: int, epoch: int) -> int:
    """The record's checksum: CRC32C over its payload followed by its place in the log."""
    return crc32c.crc32c(CHECKSUM_PLACE.pack(position, version, created, epoch), payload_crc)


def record_from_row(row: Sequence) -> Record:
    """The record of a row of RECORD_COLUMNS."""
    return Record(row[0], row[1], row[2], bytes(row[3]), row[4], bytes(row[5]), bytes(row[6]), row[7], row[8],
                  row[9], row[10])


def record_from_stored(values: Sequence, i: int = 0) -> Record:
    """The record of the stored row (STORED_COLUMNS) at `values[i:]`: its JSON payloads are spans of its text."""
    flags, text = values[i + AT_FLAGS], values[i + AT_TEXT]
    if flags & DATA_BINARY:
        data = values[i + AT_DATA]
    else:
        data = text[values[i + AT_DATA_AT]:values[i + AT_DATA_AT] + values[i + AT_DATA_LEN]]
    if flags & METADATA_BINARY:
        metadata = values[i + AT_METADATA]
    else:
        metadata = text[values[i + AT_META_AT]:values[i + AT_META_AT] + values[i + AT_META_LEN]]
    return Record(values[i + AT_POSITION], values[i + AT_STREAM], values[i + AT_VERSION], bytes(values[i + AT_ID]),
                  values[i + AT_TYPE], bytes(data), bytes(metadata), values[i + AT_CREATED], values[i + AT_EPOCH],
                  values[i + AT_CHECKSUM], flags)


def stored_row(record: Record) -> tuple:
    """A record as the writer stores it (STORED_COLUMNS), its reply text built here: for records that arrive
    whole (replication, migration)."""
    text, text_crc, data_at, data_len, meta_at, meta_len = record_json(
        record.id, record.stream, record.type, record.data, record.metadata, record.flags, record.version,
        record.position, record.created)
    flags = record.flags
    # bytearrays, not bytes: sqlite3 binds a bytearray directly but looks up an adapter for every bytes value
    return (record.position, record.version, record.checksum, bytearray(text), text_crc, record.created, record.epoch,
            record.stream, bytearray(record.id), record.type,
            bytearray(record.data) if flags & DATA_BINARY else EMPTY_PAYLOAD,
            bytearray(record.metadata) if flags & METADATA_BINARY else EMPTY_PAYLOAD,
            flags, data_at, data_len, meta_at, meta_len)


@dataclass(slots=True)
class ScavengedRecord:
    """What is kept of a scavenged event, so that a retry of its append is still answered, not written again:
    its place and the checksum of its payload (see payload_checksum)."""
    id: bytes
    stream: str
    version: int
    position: int
    payload_crc: int


@dataclass(slots=True)
class StreamRow:
    stream: str
    version: int = 0
    created: int | None = None
    updated: int | None = None
    deleted: str = "no"  # "no" | "hard"; a soft delete is metadata (truncateBefore past the end)
    metadata: bytes | None = None


def records_of_rows(rows: Sequence) -> list[Record]:
    """The records of stored rows (flat values)."""
    return [record_from_stored(rows, i) for i in range(0, len(rows), ROW_WIDTH)]


def rows_of_records(records: Iterable[Record]) -> list:
    """The stored rows of records that arrive whole (their reply texts built here)."""
    rows: list = []
    for r in records:
        rows += stored_row(r)
    return rows


def row_count(rows: Sequence) -> int:
    return len(rows) // ROW_WIDTH


def verify_rows(rows: Sequence) -> None:
    """Check each stored row as it arrived from another node: its payload and place against the record's
    checksum, then its text, the text's CRC and the payloads' spans against what record_json makes of that
    record (the reply's envelope carries the id, names, version, position and time); CorruptRecord names the
    first that fails."""
    for i in range(0, len(rows), ROW_WIDTH):
        (position, version, checksum, text, text_crc, created, epoch, stream, event_id, event_type, data, metadata,
         flags, data_at, data_len, meta_at, meta_len) = rows[i:i + ROW_WIDTH]
        if flags & ~(DATA_BINARY | METADATA_BINARY):
            raise CorruptRecord(position)
        if not flags & DATA_BINARY:
            data = text[data_at:data_at + data_len]
        if not flags & METADATA_BINARY:
            metadata = text[meta_at:meta_at + meta_len]
        payload_crc = payload_checksum(event_id, stream, event_type, data, metadata, flags)
        if sealed_checksum(payload_crc, position, version, created, epoch) != checksum or record_json(
                event_id, stream, event_type, data, metadata, flags, version, position, created) != (
                text, text_crc, data_at, data_len, meta_at, meta_len):
            raise CorruptRecord(position)


def row_record(rows: Sequence, k: int) -> Record:
    """The record of the k-th stored row."""
    return record_from_stored(rows, k * ROW_WIDTH)


def row_accounts(rows: Sequence) -> list[tuple[str, int, int, str]]:
    """(stream, version, created, type) of each stored row: what the stream rows are kept up to date with."""
    return [(rows[i + AT_STREAM], rows[i + AT_VERSION], rows[i + AT_CREATED], rows[i + AT_TYPE])
            for i in range(0, len(rows), ROW_WIDTH)]
