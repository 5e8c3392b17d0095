"""The local log on disk: SQLite in WAL mode, one writer thread doing group commit, reader threads.

The writer drains a queue of pending write operations, runs each inside a savepoint of one
transaction, commits (and so syncs) once, and only then resolves every waiting future. Readers use
their own connections in a thread pool, so the event loop never blocks on disk. Every record carries a
CRC32C over its bytes, checked whenever it is read as a record and by `verify`; each row also holds the
event's reply JSON (node/replyjson.py) with a CRC32C of its own, checked on every read that returns it.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import sqlite3
import struct
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import crc32c

from ..ids import uuid_texts
from .errors import CorruptRecord, LogError, Unavailable
from .replyjson import DATA_BINARY, METADATA_BINARY, created_tail, json_head, json_name, record_json

log = logging.getLogger("evstore.storage")

DB_FILE = "evstore.db"
FORMAT_VERSION = "3"
MAX_BATCH_REQUESTS = 2048
MAX_BATCH_WEIGHT = 50_000  # events: a group commit stops taking requests past this
SQL_VARIABLE_CHUNK = 500

# format 3's: the event's reply text (replyjson), its CRC32C, and the spans of the JSON payloads in it
_REPLY_TEXT_COLUMNS = ("json BLOB NOT NULL DEFAULT x''", "json_crc INTEGER NOT NULL DEFAULT 0",
                       "data_at INTEGER NOT NULL DEFAULT 0", "data_len INTEGER NOT NULL DEFAULT 0",
                       "meta_at INTEGER NOT NULL DEFAULT 0", "meta_len INTEGER NOT NULL DEFAULT 0")
_COLUMN_BREAK = ",\n    "
TABLES = f"""
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream   TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    id       BLOB    NOT NULL,
    type     TEXT    NOT NULL,
    data     BLOB    NOT NULL,
    metadata BLOB    NOT NULL,
    created  INTEGER NOT NULL,
    epoch    INTEGER NOT NULL,
    checksum INTEGER NOT NULL,
    flags    INTEGER NOT NULL DEFAULT 0,
    {_COLUMN_BREAK.join(_REPLY_TEXT_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS streams (
    stream   TEXT PRIMARY KEY,
    version  INTEGER NOT NULL,
    created  INTEGER,
    updated  INTEGER,
    deleted  TEXT NOT NULL DEFAULT 'no',
    metadata BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (epoch INTEGER PRIMARY KEY, start INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS scavenged_ids (
    id          BLOB PRIMARY KEY,
    stream      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    payload_crc INTEGER NOT NULL
) WITHOUT ROWID;
"""
# A stream's category is its name up to and including the first '-' ('' without one), as KurrentDB's
# $by_category. Built-in deterministic functions only, so the plain sqlite3 shell can still write the file.
CATEGORY_SQL = "substr(stream, 1, instr(stream, '-'))"
INDEXES = f"""
CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events(stream, version);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_id ON events(id);
CREATE INDEX IF NOT EXISTS events_by_type ON events(type, position);
CREATE INDEX IF NOT EXISTS events_by_category ON events({CATEGORY_SQL}, position);
"""
SCHEMA = TABLES + INDEXES

# Since format 3 each row also holds the event's reply JSON (replyjson), with its own CRC32C. A JSON payload is
# stored only there (its column is empty) and read back by its span; a binary one keeps its raw bytes too.
DATA_SQL = "CASE WHEN flags & 1 THEN data ELSE substr(json, data_at + 1, data_len) END"
METADATA_SQL = "CASE WHEN flags & 2 THEN metadata ELSE substr(json, meta_at + 1, meta_len) END"
# a record's fields, in Record's order
RECORD_COLUMNS = f"position, stream, version, id, type, {DATA_SQL}, {METADATA_SQL}, created, epoch, checksum, flags"
# an event as the reply renders it, with what paging needs
REPLY_COLUMNS = "position, json, json_crc"
_PLAIN_COLUMNS = "position, stream, version, id, type, data, metadata, created, epoch, checksum, flags"  # format 2's
# A row as the writer inserts it: first what depends on the event's place in the log, then the event's own values
# in the order seal_payloads prepares them (NewEvent.fixed), so that the writer adds each row in two pieces.
STORED_COLUMNS = ("position, version, checksum, json, json_crc, created, epoch, stream, "
                  "id, type, data, metadata, flags, data_at, data_len, meta_at, meta_len")
# where each value sits in a stored row
(_AT_POSITION, _AT_VERSION, _AT_CHECKSUM, _AT_TEXT, _AT_TEXT_CRC, _AT_CREATED, _AT_EPOCH, _AT_STREAM, _AT_ID, _AT_TYPE,
 _AT_DATA, _AT_METADATA, _AT_FLAGS, _AT_DATA_AT, _AT_DATA_LEN, _AT_META_AT, _AT_META_LEN) = range(17)
_COLUMNS = 17  # values of one stored row
_INTS = struct.Struct("<QQqq")
_EMPTY = bytearray()  # the data or metadata column of a JSON payload (it lives in `json`)


def _value_rows(rows: int, columns: int) -> str:
    return ",".join(["(" + ",".join("?" * columns) + ")"] * rows)


@functools.cache
def _insert_sql(rows: int) -> str:
    """One multi-row INSERT per row count (SQLite's statement cache keeps them prepared)."""
    return f"INSERT INTO events ({STORED_COLUMNS}) VALUES {_value_rows(rows, _COLUMNS)}"


_LENGTHS = struct.Struct("<IIII")
CHECKSUM_LENGTHS, CHECKSUM_PLACE = _LENGTHS, _INTS  # the two packed parts of a record's checksum


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


_FLAG_BYTES = [bytes([flags]) for flags in range(4)]


def payload_checksum(event_id: bytes, stream: str, event_type: str, data: bytes, metadata: bytes,
                     flags: int = 0) -> int:
    """CRC32C of what the writer of an event decides: its id, stream, type, data and metadata (after their
    four lengths), then its content-type byte when it is not 0 (JSON data and metadata): so the records of
    format 1, which were all JSON, keep their checksums. The log computes it before the event reaches the
    writer thread, to keep that path short."""
    stream_bytes, type_bytes = stream.encode(), event_type.encode()
    lengths = _LENGTHS.pack(len(stream_bytes), len(type_bytes), len(data), len(metadata))
    crc = crc32c.crc32c(b"".join((event_id, lengths, stream_bytes, type_bytes, data, metadata)))
    return crc32c.crc32c(_FLAG_BYTES[flags], crc) if flags else crc


def seal_payloads(stream: str, events: Sequence) -> int:
    """Set `payload_crc` (see payload_checksum) on each event of one stream, its id's text if the caller had none
    (`id_text`), the head of its reply text (`head`, see replyjson.json_head), and the stored row's values that do not depend on the event's place (`fixed`, from
    the id to the payloads' spans in the text: see STORED_COLUMNS); return their data and metadata bytes. One pass
    with the stream encoded once, off the writer thread: appends of 100 events run this for every event."""
    stream_bytes = stream.encode()
    stream_length = len(stream_bytes)
    stream_json = json_name(stream)
    after_id = b'","stream":' + stream_json + b',"type":'
    data_at = len(b'{"id":"') + 36 + len(after_id) + len(b',"data":')  # plus the type's length
    type_names: dict[str, tuple[bytes, bytes, int]] = {}
    pack, crc, join = _LENGTHS.pack, crc32c.crc32c, b"".join
    join_into_bytearray = _EMPTY.join  # the head as the bytearray the writer extends, without a copy
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
            e.payload_crc = crc(_FLAG_BYTES[flags], e.payload_crc)
            text, *spans = json_head(event_id, stream_json, json_name(event_type), data, metadata, flags)
            e.head = bytearray(text)
            e.fixed = (bytearray(event_id), event_type, bytearray(data) if flags & DATA_BINARY else _EMPTY,
                       bytearray(metadata) if flags & METADATA_BINARY else _EMPTY, flags, *spans)
        else:  # json_head's text, built in one join (the common case, once per event)
            e.head = join_into_bytearray((b'{"id":"', e.id_text, after_id, type_and_data_key, data,
                                          b',"metadata":', metadata, b',"version":'))
            e.fixed = (bytearray(event_id), event_type, _EMPTY, _EMPTY, 0, at, len(data), at + len(data) + 12,
                       len(metadata))
        size += len(data) + len(metadata)
    return size


def sealed_checksum(payload_crc: int, position: int, version: int, created: int, epoch: int) -> int:
    """The record's checksum: CRC32C over its payload followed by its place in the log."""
    return crc32c.crc32c(_INTS.pack(position, version, created, epoch), payload_crc)


def record_from_row(row: Sequence) -> Record:
    """The record of a row of RECORD_COLUMNS."""
    return Record(row[0], row[1], row[2], bytes(row[3]), row[4], bytes(row[5]), bytes(row[6]), row[7], row[8],
                  row[9], row[10])


def record_from_stored(values: Sequence, i: int = 0) -> Record:
    """The record of the stored row (STORED_COLUMNS) at `values[i:]`: its JSON payloads are spans of its text."""
    flags, text = values[i + _AT_FLAGS], values[i + _AT_TEXT]
    if flags & DATA_BINARY:
        data = values[i + _AT_DATA]
    else:
        data = text[values[i + _AT_DATA_AT]:values[i + _AT_DATA_AT] + values[i + _AT_DATA_LEN]]
    if flags & METADATA_BINARY:
        metadata = values[i + _AT_METADATA]
    else:
        metadata = text[values[i + _AT_META_AT]:values[i + _AT_META_AT] + values[i + _AT_META_LEN]]
    return Record(values[i + _AT_POSITION], values[i + _AT_STREAM], values[i + _AT_VERSION], bytes(values[i + _AT_ID]),
                  values[i + _AT_TYPE], bytes(data), bytes(metadata), values[i + _AT_CREATED], values[i + _AT_EPOCH],
                  values[i + _AT_CHECKSUM], flags)


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
            bytearray(record.data) if flags & DATA_BINARY else _EMPTY,
            bytearray(record.metadata) if flags & METADATA_BINARY else _EMPTY,
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


def now_micros() -> int:
    return time.time_ns() // 1000


WRITER_CACHE_KIB = 16 * 1024
READER_CACHE_KIB = 4 * 1024
CHECKPOINT_EVERY = 1.0  # seconds between checkpoints, which run off the writer's commit path
WAL_REWIND_FRAMES = 4096  # past this many WAL pages (16 MiB of 4 KiB pages), catch up and rewind the WAL
WAL_CATCH_UP_ROUNDS = 4  # passive rounds to catch up with the writer before the writer copies the rest
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # what a rewound WAL file is truncated to


def connect(path: Path, *, readonly: bool = False, synchronous: str = "FULL",
            cache_kib: int = READER_CACHE_KIB) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30,
                           cached_statements=256)  # room for the multi-row INSERTs of every size
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    # the id index takes random keys: a page cache that holds it keeps inserts off the disk
    conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    if readonly:
        conn.execute("PRAGMA query_only=1")
    return conn


Outcome = tuple[asyncio.Future, asyncio.AbstractEventLoop, Any, BaseException | None]  # an op's, for its future


class FlushFailed(Exception):
    """Writing the buffered rows of a group commit failed: the whole commit is rolled back, then either run again
    with every id looked up (`stored_id`) or failed."""

    def __init__(self, message: str, *, stored_id: bool = False) -> None:
        super().__init__(message)
        self.stored_id = stored_id  # an event id already in the log: the group is run again, checking ids first
        self.outcomes: list = []  # of the pass whose flush failed


def _reuses_stored_id(exc: sqlite3.Error) -> bool:
    """The UNIQUE constraint of the id index failed (SQLite names the index's column in the message)."""
    return (isinstance(exc, sqlite3.IntegrityError)
            and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CONSTRAINT_UNIQUE
            and "events.id" in str(exc))


_MISSING = object()
_STREAM_COLUMNS = "stream, version, created, updated, deleted, metadata"
MAX_ROWS_PER_STATEMENT = 512
_SELECT_SIZES = (1, 4, 16, 64, 256, MAX_ROWS_PER_STATEMENT)


def _row_chunks(count: int) -> Iterable[tuple[int, int]]:
    """(offset, rows) pieces of `count` rows: whole MAX_ROWS_PER_STATEMENT pieces, then the binary digits of the
    rest. Ten statement shapes cover every count, so they all stay prepared in the statement cache."""
    offset = 0
    while count - offset >= MAX_ROWS_PER_STATEMENT:
        yield offset, MAX_ROWS_PER_STATEMENT
        offset += MAX_ROWS_PER_STATEMENT
    size = MAX_ROWS_PER_STATEMENT // 2
    while offset < count:
        if count - offset >= size:
            yield offset, size
            offset += size
        size //= 2


@functools.cache
def _stream_upsert_sql(rows: int) -> str:
    return f"INSERT OR REPLACE INTO streams ({_STREAM_COLUMNS}) VALUES {_value_rows(rows, 6)}"


@functools.cache
def _stream_select_sql(names: int) -> str:
    return f"SELECT {_STREAM_COLUMNS} FROM streams WHERE stream IN ({','.join('?' * names)})"


RECENT_COMMITS_BYTES = 8 << 20
RECENT_COMMITS_MAX = 4096


def _shipped_bytes(values: list, offset: int = 0) -> int:
    """What the flat records from `offset` count against a replication budget (as Log.rows_from counts)."""
    return sum(_row_bytes(values, i) for i in range(offset, len(values), _COLUMNS))


def _row_bytes(values: Sequence, i: int) -> int:
    """About what the stored row at `values[i:]` takes in a fetch reply of wire format 3 (its text, binary
    payloads, stream and fixed fields)."""
    return (len(values[i + _AT_TEXT]) + len(values[i + _AT_DATA]) + len(values[i + _AT_METADATA])
            + len(values[i + _AT_STREAM]) + 64)


class RecentCommits:
    """The records of the latest group commits, kept in memory as the writer wrote them, so that replication
    ships a follower its next entries without reading them back from SQLite (at the tail, where caught-up
    followers fetch, a read back cost the leader a reader-thread round trip per fetch, on the critical path of
    every acknowledgement). Whole commits, contiguous up to the head; the writer empties it whenever SQL of its
    own removed, inserted or rolled back records (scavenges, trims, truncation, replicated inserts).
    Kept only while switched on (by a leader: nothing else ships its log)."""

    def __init__(self, *, max_bytes: int = RECENT_COMMITS_BYTES, max_commits: int = RECENT_COMMITS_MAX,
                 on: bool = False) -> None:
        self.on = on
        self.max_bytes = max_bytes
        self.max_commits = max_commits
        self._commits: deque[tuple[int, int, list, int]] = deque()  # (first, last position, values, bytes)
        self._bytes = 0
        self._lock = threading.Lock()  # the writer thread adds, the event loop reads

    def clear(self) -> None:
        with self._lock:
            self._commits.clear()
            self._bytes = 0

    def keep(self, on: bool) -> None:
        """Start (True) or stop keeping commits; either way it starts empty."""
        self.on = on
        self.clear()

    def add(self, flushed: list[list], last_position: int) -> None:
        """One commit's records (flat values, _COLUMNS per record, in position order) ending at `last_position`."""
        if not self.on:
            return
        values = flushed[0] if len(flushed) == 1 else [v for part in flushed for v in part]
        first = values[_AT_POSITION]
        if values[_AT_POSITION - _COLUMNS] != last_position or (last_position - first + 1) * _COLUMNS != len(values):
            self.clear()  # not one contiguous run ending at the head: keep nothing rather than a hole
            return
        size = _shipped_bytes(values)
        with self._lock:
            if self._commits and self._commits[-1][1] + 1 != first:
                self._commits.clear()
                self._bytes = 0
            self._commits.append((first, last_position, values, size))
            self._bytes += size
            while len(self._commits) > 1 and (self._bytes > self.max_bytes or len(self._commits) > self.max_commits):
                self._bytes -= self._commits.popleft()[3]

    def rows_from(self, first: int, max_bytes: int) -> list | None:
        """As Log.rows_from: the stored rows (flat values) from `first` to the end of its commit, then whole
        commits while fewer than `max_bytes` were taken; None when `first` is not in memory (read the store)."""
        with self._lock:
            commits = self._commits
            if not commits or not commits[0][0] <= first <= commits[-1][1]:
                return None
            index = len(commits) - 1
            while commits[index][0] > first:
                index -= 1
            rows: list = []
            size = 0
            for k in range(index, len(commits)):
                start, _last, values, commit_bytes = commits[k]
                if rows and size >= max_bytes:
                    break
                offset = (first - start) * _COLUMNS if k == index else 0
                rows += values[offset:] if offset else values
                size += _shipped_bytes(values, offset) if offset else commit_bytes
        return rows


def rows_from_store(conn: sqlite3.Connection, first: int, max_bytes: int) -> list:
    """Log.rows_from, read from SQLite: whole commits (a commit's records share `created`)."""
    rows: list = []
    size = 0
    last_created = None
    for row in conn.execute(f"SELECT {STORED_COLUMNS} FROM events WHERE position >= ? ORDER BY position", (first,)):
        if size >= max_bytes and row[_AT_CREATED] != last_created:
            break
        rows += row
        last_created = row[_AT_CREATED]
        size += _row_bytes(row, 0)
    return rows


def records_of_rows(rows: Sequence) -> list[Record]:
    """The records of stored rows (flat values)."""
    return [record_from_stored(rows, i) for i in range(0, len(rows), _COLUMNS)]


def rows_of_records(records: Iterable[Record]) -> list:
    """The stored rows of records that arrive whole (their reply texts built here)."""
    rows: list = []
    for r in records:
        rows += stored_row(r)
    return rows


def row_count(rows: Sequence) -> int:
    return len(rows) // _COLUMNS


def verify_rows(rows: Sequence) -> None:
    """Check each stored row as it arrived from another node: its payload and place against the record's
    checksum, then its text, the text's CRC and the payloads' spans against what record_json makes of that
    record (the reply's envelope carries the id, names, version, position and time); CorruptRecord names the
    first that fails."""
    for i in range(0, len(rows), _COLUMNS):
        (position, version, checksum, text, text_crc, created, epoch, stream, event_id, event_type, data, metadata,
         flags, data_at, data_len, meta_at, meta_len) = rows[i:i + _COLUMNS]
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
    return record_from_stored(rows, k * _COLUMNS)


def row_accounts(rows: Sequence) -> list[tuple[str, int, int, str]]:
    """(stream, version, created, type) of each stored row: what the stream rows are kept up to date with."""
    return [(rows[i + _AT_STREAM], rows[i + _AT_VERSION], rows[i + _AT_CREATED], rows[i + _AT_TYPE])
            for i in range(0, len(rows), _COLUMNS)]


class WriteTxn:
    """What a write operation may do inside the writer's transaction.

    Appends, stream rows and epoch runs are buffered and written with a few multi-row statements when the group
    commit ends (`flush`), not one statement each: every statement costs the writer a release and a re-take of
    the GIL, which the event loop holds most of the time under load. An op that fails before touching SQL is
    undone in the buffers alone; an op that needs SQL itself (`conn`, and the methods that use it) gets a
    savepoint, taken after everything buffered before it is flushed. Such an op must touch SQL before it buffers
    anything."""

    def __init__(self, conn: sqlite3.Connection, last_position: int, now: int, epoch: int,
                 epochs: list[tuple[int, int]] | None = None, *, scavenged: bool = False,
                 look_up_stored_ids: bool = True) -> None:
        self._conn = conn
        self.scavenged = scavenged  # the log has scavenged ids to look up (or removes some in this txn)
        # False: an insert's lookup of its ids may skip the stored records (see records_by_ids)
        self.look_up_stored_ids = look_up_stored_ids
        self.last_position = last_position
        self.now = now
        self.epoch = epoch
        self.epochs = list(epochs or [])  # (epoch, first position) of each run of the log, ascending
        self.last_created = now
        self._events: list = []  # flat INSERT parameters of the buffered records, _COLUMNS per record
        self._event_ids: dict[bytes, int] = {}  # id -> index of its record in _events
        self._rows: dict[str, tuple | None] = {}  # stream rows as this transaction sees them (None: no row)
        self._dirty: set[str] = set()  # streams whose row is to be written
        self._new_epochs: list[tuple[int, int]] = []
        self._op_marks: tuple[int, int] = (0, 0)
        self._op_undo: list[tuple[str, Any, bool]] = []
        self._op_savepoint = False
        self.flushed: list[list] = []  # the flat values of the records written, in position order
        self.rewrote_events = False  # SQL of an op removed, inserted or rolled back records: `flushed` is not all

    # op boundaries (the writer calls these around each op) ----------------------------------------
    def begin_op(self) -> None:
        self._op_marks = (len(self._events), len(self._new_epochs))
        self._op_undo = []
        self._op_savepoint = False

    def end_op(self) -> None:
        if self._op_savepoint:
            self._conn.execute("RELEASE op")

    def undo_op(self) -> None:
        """Forget what the failed op wrote; the caller restores positions and epochs."""
        if self._op_savepoint:
            self._conn.execute("ROLLBACK TO op")
            self._conn.execute("RELEASE op")
            self.rewrote_events = True  # records it flushed may be among what was rolled back
            events_mark = epochs_mark = 0  # the buffers were empty when the savepoint was taken
        else:
            events_mark, epochs_mark = self._op_marks
        for i in range(events_mark, len(self._events), _COLUMNS):
            self._event_ids.pop(bytes(self._events[i + _AT_ID]), None)
        del self._events[events_mark:]
        del self._new_epochs[epochs_mark:]
        for stream, previous, was_dirty in reversed(self._op_undo):
            if previous is _MISSING:
                self._rows.pop(stream, None)
            else:
                self._rows[stream] = previous
            if not was_dirty:
                self._dirty.discard(stream)
        self._op_undo = []

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, for ops that need SQL of their own: it sees everything written so far."""
        if not self._op_savepoint:
            if len(self._events) > self._op_marks[0] or len(self._new_epochs) > self._op_marks[1] or self._op_undo:
                raise RuntimeError("a write op used SQL after buffering writes: it could not be undone")
            self.flush()
            self._conn.execute("SAVEPOINT op")
            self._op_savepoint = True
        else:
            self.flush()
        return self._conn

    def flush(self) -> None:
        """Write everything buffered to the tables (before COMMIT, and before an op's own SQL)."""
        try:
            execute = self._conn.execute
            if self._new_epochs:
                self._conn.executemany("INSERT OR REPLACE INTO epochs (epoch, start) VALUES (?, ?)",
                                       self._new_epochs)
                self._new_epochs = []
            values = self._events
            if values:
                for offset, rows in _row_chunks(len(values) // _COLUMNS):
                    execute(_insert_sql(rows), values[offset * _COLUMNS:(offset + rows) * _COLUMNS])
                self.flushed.append(values)
                self._events = []
                self._event_ids = {}
            if self._dirty:
                rows = [self._rows[stream] for stream in self._dirty if self._rows.get(stream) is not None]
                params = [value for row in rows for value in row]
                for offset, count in _row_chunks(len(rows)):
                    execute(_stream_upsert_sql(count), params[offset * 6:(offset + count) * 6])
                self._dirty = set()
        except sqlite3.Error as exc:
            raise FlushFailed(str(exc), stored_id=_reuses_stored_id(exc)) from exc

    # stream rows ------------------------------------------------------------------------------
    def prefetch_rows(self, streams: Iterable[str]) -> None:
        """Read the rows of these streams with one statement per 512 (the ops of a batch ask for them next)."""
        names = [s for s in dict.fromkeys(streams) if s not in self._rows]
        for offset in range(0, len(names), MAX_ROWS_PER_STATEMENT):
            part = names[offset:offset + MAX_ROWS_PER_STATEMENT]
            size = next(n for n in _SELECT_SIZES if n >= len(part))
            for name in part:
                self._rows[name] = None
            padded = part + [part[-1]] * (size - len(part))  # padding repeats a name: fewer statement shapes
            for row in self._conn.execute(_stream_select_sql(size), padded):
                self._rows[row[0]] = tuple(row)

    def stream_row(self, stream: str) -> StreamRow | None:
        """The stream's row as this transaction sees it; a copy the op may change and `save_stream_row`."""
        row = self._rows.get(stream, _MISSING)
        if row is _MISSING:
            found = self._conn.execute(f"SELECT {_STREAM_COLUMNS} FROM streams WHERE stream = ?",
                                       (stream,)).fetchone()
            row = self._rows[stream] = tuple(found) if found else None
        return StreamRow(*row) if row is not None else None

    def save_stream_row(self, row: StreamRow) -> None:
        stream = row.stream
        self._op_undo.append((stream, self._rows.get(stream, _MISSING), stream in self._dirty))
        self._rows[stream] = (stream, row.version, row.created, row.updated, row.deleted, row.metadata)
        self._dirty.add(stream)

    # events ------------------------------------------------------------------------------------
    def note_epoch(self, epoch: int, position: int) -> None:
        """Record that `position` holds an entry of `epoch`: a new run when the epoch is newer than the last."""
        if self.epochs and epoch <= self.epochs[-1][0]:
            if epoch < self.epochs[-1][0]:
                raise Unavailable(f"entry of epoch {epoch} after entries of epoch {self.epochs[-1][0]}",
                                  reason="stale_epoch")
            return
        self.epochs = [*self.epochs, (epoch, position)]  # a new list: an op's undo keeps the old one
        self._new_epochs.append((epoch, position))

    def allocate_positions(self, count: int) -> int:
        first = self.last_position + 1
        self.last_position += count
        return first

    def records_by_ids(self, ids: Sequence[bytes], *, before_insert: bool = False) -> list[Record | ScavengedRecord]:
        """The records holding these ids, and what is kept of those a scavenge removed. `before_insert`: the
        lookup of an op that inserts these ids unless found, which may skip the records in the events table (those
        stored before this transaction, and those an op's own SQL flushed in it) unless `look_up_stored_ids`:
        client-made ids are random, a lookup in an id index larger than the writer's cache costs a page read per
        id on every append, and inserting a stored id fails the flush anyway (FlushFailed.stored_id), after which
        the writer runs the group again with every lookup made. Scavenged ids are always looked up."""
        complete = self.look_up_stored_ids or not before_insert
        found = self._records_by_ids(ids, stored=complete)
        if self.scavenged and len(found) < len(ids):
            missing = list(set(ids) - {r.id for r in found})
            for i in range(0, len(missing), SQL_VARIABLE_CHUNK):
                chunk = missing[i:i + SQL_VARIABLE_CHUNK]
                found.extend(ScavengedRecord(bytes(r[0]), *r[1:]) for r in self._conn.execute(
                    "SELECT id, stream, version, position, payload_crc FROM scavenged_ids "
                    f"WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        if found and not complete and len(found) < len(ids):  # some known: a retry or a reuse, which needs all
            return self.records_by_ids(ids)
        return found

    def _records_by_ids(self, ids: Sequence[bytes], *, stored: bool) -> list[Record]:
        found: list[Record] = []
        values, buffered = self._events, self._event_ids
        unbuffered = []
        for event_id in ids:
            index = buffered.get(event_id)
            if index is not None:
                found.append(record_from_stored(values, index))
            elif stored:
                unbuffered.append(event_id)
        for i in range(0, len(unbuffered), SQL_VARIABLE_CHUNK):
            chunk = unbuffered[i:i + SQL_VARIABLE_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.extend(record_from_row(r) for r in self._conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM events WHERE id IN ({marks})", chunk))
        return found

    def insert(self, stream: str, first_position: int, first_version: int, events: Sequence) -> None:
        """Buffer events (sealed by seal_payloads: payload_crc, their reply text's head, and the row's fixed
        values) as consecutive records."""
        now, epoch = self.now, self.epoch
        self.note_epoch(epoch, first_position)
        # this loop runs once per event on the writer, so it stays lean: what it can, seal_payloads prepared
        values = self._events
        add, ids = values.extend, self._event_ids
        pack, crc = _INTS.pack, crc32c.crc32c
        created = created_tail(now)
        position, version = first_position, first_version
        for e in events:
            index = len(values)
            text = e.head + b'%d,"position":%d%b' % (version, position, created)
            add((position, version, crc(pack(position, version, now, epoch), e.payload_crc), text, crc(text), now,
                 epoch, stream))
            add(e.fixed)
            ids[e.id] = index
            position += 1
            version += 1

    def insert_rows(self, rows: Sequence) -> None:
        """Insert stored rows (flat values) exactly as another node wrote them (replication): positions, epochs,
        checksums, reply texts."""
        conn = self.conn
        self.rewrote_events = True
        for i in range(0, len(rows), _COLUMNS):
            position = rows[i + _AT_POSITION]
            if position <= self.last_position:
                raise LogError(f"replicated entry at position {position} is not after the head "
                               f"{self.last_position}")
            self.note_epoch(rows[i + _AT_EPOCH], position)
            self.last_position = position
            self.last_created = max(self.last_created, rows[i + _AT_CREATED])
        for offset, count in _row_chunks(len(rows) // _COLUMNS):  # multi-row INSERTs, as in `insert`
            conn.execute(_insert_sql(count), rows[offset * _COLUMNS:(offset + count) * _COLUMNS])

    def truncate_after(self, position: int) -> list[tuple[str, int]]:
        """Delete every record after `position`; the (stream, lowest removed version) of each stream touched."""
        conn = self.conn
        self.rewrote_events = True
        touched = conn.execute("SELECT stream, min(version) FROM events WHERE position > ? GROUP BY stream",
                               (position,)).fetchall()
        if conn.execute("DELETE FROM events WHERE position > ?", (position,)).rowcount:
            self._count_removal()
        conn.execute("DELETE FROM epochs WHERE start > ?", (position,))
        self.epochs = [e for e in self.epochs if e[1] <= position]
        self.last_position = position
        return touched

    def set_setting(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    def delete_events(self, stream: str, below_version: int, created_before: int | None, *,
                      keep_ids: bool = False, through: int | None = None) -> int:
        """Remove the stream's events below a version or created before a time (at positions up to `through`);
        with `keep_ids`, keep what idempotency needs of them (see ScavengedRecord)."""
        sql = "DELETE FROM events WHERE stream = ?"
        args: list[Any] = [stream]
        if through is not None:
            sql += " AND position <= ?"
            args.append(through)
        sql += " AND (version < ?"
        args.append(below_version)
        if created_before is not None:
            sql += " OR created < ?"
            args.append(created_before)
        conn = self.conn
        if keep_ids:
            condition = sql.removeprefix("DELETE FROM events") + ")"
            kept = [(bytes(r[0]), r[1], r[2], r[3], payload_checksum(bytes(r[0]), r[1], r[4], bytes(r[5]),
                                                                   bytes(r[6]), r[7]))
                    for r in conn.execute(f"SELECT id, stream, version, position, type, {DATA_SQL}, {METADATA_SQL}, "
                                          f"flags FROM events{condition}", args)]
            conn.executemany("INSERT OR REPLACE INTO scavenged_ids (id, stream, version, position, payload_crc) "
                             "VALUES (?, ?, ?, ?, ?)", kept)
            self.scavenged = self.scavenged or bool(kept)
        removed = conn.execute(sql + ")", args).rowcount
        self.rewrote_events = self.rewrote_events or bool(removed)
        if removed:  # the newest record may be among them: start-up reads the last `created` from here then
            self.set_setting("last_created", str(self.now))
            self._count_removal()
        return removed

    def _count_removal(self) -> None:
        """One more transaction that removed records (see removal_count), in the same transaction."""
        self.conn.execute("INSERT INTO settings (key, value) VALUES ('removals', '1') ON CONFLICT (key) "
                          "DO UPDATE SET value = CAST(value AS INTEGER) + 1")


def removal_count(conn: sqlite3.Connection) -> int:
    """How many transactions have removed records (a scavenge, a trim, a truncation), as of the caller's read
    transaction: equal counts in two read transactions mean that every record at or below the older one's head
    is the same in both (records are otherwise only added, above the head)."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'removals'").fetchone()
    return int(row[0]) if row else 0


def open_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema of a new log, or bring a log of format 1 to this format (in one transaction)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    fmt = conn.execute("SELECT value FROM settings WHERE key = 'format'").fetchone() if "settings" in tables \
        else None
    if fmt is not None and fmt[0] not in ("1", "2", FORMAT_VERSION):
        raise RuntimeError(f"{path} has log format {fmt[0]}; this node reads formats 1 and 2 (migrated on open) "
                           f"and {FORMAT_VERSION}: run the evstore release that wrote it, or restore a backup")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if fmt is not None and fmt[0] == "1":
            log.warning("migrating %s from log format 1 to %s: adding the content-type column and building the "
                        "type and category indexes (once; it takes a while on a large log)", path, FORMAT_VERSION)
            # format-1 records are all JSON (flags 0), whose checksums format 2 computes the same way
            conn.execute("ALTER TABLE events ADD COLUMN flags INTEGER NOT NULL DEFAULT 0")
            # format 1 read every stream with truncateBefore past its end as soft deleted; format 2 only those a
            # delete marked: mark them, so they stay deleted
            conn.execute("UPDATE streams SET metadata = CAST(json_set(CAST(metadata AS TEXT), '$.\"$softDeleted\"', "
                         "json('true')) AS BLOB) WHERE deleted = 'no' AND version > 0 AND metadata IS NOT NULL "
                         "AND json_extract(CAST(metadata AS TEXT), '$.truncateBefore') > version")
        if fmt is not None and fmt[0] in ("1", "2"):
            log.warning("migrating %s from log format %s to %s: storing each event's reply JSON (once; about "
                        "20 s per million events on a small machine)", path, fmt[0], FORMAT_VERSION)
            _add_reply_texts(conn)
        for statement in (TABLES + INDEXES).split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO settings VALUES ('format', ?)", (FORMAT_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _add_reply_texts(conn: sqlite3.Connection, batch: int = 5000) -> None:
    """Format 2 to 3, inside the caller's transaction: the reply text of every record, its JSON payloads kept
    there only (their checksums are unchanged: the record's fields are)."""
    for column in _REPLY_TEXT_COLUMNS:
        conn.execute(f"ALTER TABLE events ADD COLUMN {column}")
    for rows in _row_batches(conn, _PLAIN_COLUMNS, batch):
        stored = [stored_row(record_from_row(row)) for row in rows]
        conn.executemany("UPDATE events SET data = ?, metadata = ?, json = ?, json_crc = ?, data_at = ?, "
                         "data_len = ?, meta_at = ?, meta_len = ? WHERE position = ?",
                         [(row[_AT_DATA], row[_AT_METADATA], row[_AT_TEXT], row[_AT_TEXT_CRC], *row[_AT_DATA_AT:],
                           row[_AT_POSITION]) for row in stored])


WriteOp = Callable[[WriteTxn], Any]
ReadOp = Callable[..., Any]
_STOP = object()


class Storage:
    def __init__(self, data_dir: Path, *, durability: str = "sync", sync_interval: float = 0.2,
                 metrics=None, reader_threads: int = 4) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_FILE
        self.durability = durability
        self.sync_interval = sync_interval
        self.metrics = metrics
        self.reader_threads = reader_threads
        self.head = 0  # last durable position; written only by the writer thread
        self.recent = RecentCommits()
        self.epoch = 0  # the epoch this node writes new entries with (its leader epoch)
        self.epochs: list[tuple[int, int]] = []  # (epoch, first position) runs; replaced, never mutated
        self.promised_epoch = 0  # the newest leader epoch this node has followed or led (persisted)
        self.committed = 0  # the cluster's committed position as last persisted here (never truncated)
        self._last_created = 0
        self._scavenged = False  # scavenged_ids has rows: appends with given ids look there too
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.writes_in_flight = 0  # write() calls not yet durable: a hint for replication (the loop changes it)
        self._writer: threading.Thread | None = None
        self._readers: list[threading.Thread] = []
        self._read_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._read_lock = threading.Lock()  # no read is queued behind the readers' stops
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._closed = True
        self._dirty = threading.Event()
        self._syncer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._rewind_wal = threading.Event()  # the checkpointer asks the writer to copy the WAL's last frames

    # lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, synchronous="FULL" if self.durability == "sync" else "NORMAL",
                       cache_kib=WRITER_CACHE_KIB)
        try:
            open_schema(conn, self.path)
        except BaseException:
            conn.close()
            raise
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it, not the commit path
        # O(1) in the log's size: `created` grows with the position (each commit takes a time past the last
        # one), and a scavenge that removes the newest records keeps that time in the settings
        last = conn.execute("SELECT position, created FROM events ORDER BY position DESC LIMIT 1").fetchone()
        self.head, self._last_created = last if last else (0, 0)
        kept = conn.execute("SELECT value FROM settings WHERE key = 'last_created'").fetchone()
        self._last_created = max(self._last_created, int(kept[0]) if kept else 0)
        self._scavenged = conn.execute("SELECT 1 FROM scavenged_ids LIMIT 1").fetchone() is not None
        self.epochs = [tuple(r) for r in conn.execute("SELECT epoch, start FROM epochs ORDER BY start")]
        if not self.epochs and self.head:  # a log written before epochs were tracked
            self.epochs = [tuple(r) for r in conn.execute(
                "SELECT epoch, min(position) FROM events GROUP BY epoch ORDER BY 2")]
            conn.executemany("INSERT OR REPLACE INTO epochs (epoch, start) VALUES (?, ?)", self.epochs)
        if self.epochs:
            self.epoch = self.epochs[-1][0]
        promised = conn.execute("SELECT value FROM settings WHERE key = 'promised_epoch'").fetchone()
        self.promised_epoch = max(int(promised[0]) if promised else 0, self.epoch)
        committed = conn.execute("SELECT value FROM settings WHERE key = 'committed'").fetchone()
        self.committed = min(int(committed[0]) if committed else 0, self.head)
        self._closed = False
        self._writer = threading.Thread(target=self._writer_loop, args=(conn,), name="evstore-writer", daemon=True)
        self._writer.start()
        self._readers = [threading.Thread(target=self._reader_loop, name=f"evstore-reader-{i}", daemon=True)
                         for i in range(self.reader_threads)]
        for reader in self._readers:
            reader.start()
        if self.durability == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="evstore-syncer", daemon=True)
            self._syncer.start()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="evstore-checkpointer",
                                              daemon=True)
        self._checkpointer.start()

    def close(self) -> None:
        """Finish queued writes, checkpoint the WAL into the database file and close every connection."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        self._queue.put(_STOP)
        if self._writer is not None:
            self._writer.join()  # the writer runs what is queued, then checkpoints the whole WAL
        if self._syncer is not None:
            self._dirty.set()
            self._syncer.join()
        with self._read_lock:
            readers, self._readers = self._readers, []
        for _reader in readers:
            self._read_queue.put(_STOP)
        for reader in readers:
            reader.join()  # each finishes the reads queued before its stop
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    def size_bytes(self) -> int:
        return sum(self.size_by_file().values())

    def size_by_file(self) -> dict[str, int]:
        """Bytes of the database file ("data") and of its write-ahead log with the WAL index ("wal")."""
        sizes = {"data": 0, "wal": 0}
        for suffix, kind in (("", "data"), ("-wal", "wal"), ("-shm", "wal")):
            try:
                sizes[kind] += os.path.getsize(str(self.path) + suffix)
            except OSError:
                pass
        return sizes

    # writes ----------------------------------------------------------------------------------
    async def write(self, op: WriteOp, weight: int = 1, streams: tuple[str, ...] = ()) -> Any:
        """Run op in the writer's next transaction; return once that transaction is durable.
        `weight` (events written) bounds how much one group commit takes; `streams` are the streams whose
        rows the op reads (the writer reads the rows of a whole batch at once)."""
        if self._closed:
            raise Unavailable("the node is shutting down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((op, future, loop, weight, streams))
        self.writes_in_flight += 1
        try:
            return await future
        finally:
            self.writes_in_flight -= 1

    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            weight = item[3]
            while len(batch) < MAX_BATCH_REQUESTS and weight < MAX_BATCH_WEIGHT:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                batch.append(more)
                weight += more[3]
            self._run_batch(conn, batch)
            if self._rewind_wal.is_set():
                self._rewind_wal.clear()
                try:  # between transactions nothing is added while it copies: the checkpoint completes
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.exception("checkpoint by the writer failed")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            log.exception("checkpoint at close failed")
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list) -> None:
        # strictly increasing: the records of one group commit share a `created` no other commit has, which
        # lets replication ship whole commits (never half of an append)
        now = max(now_micros(), self._last_created + 1)
        ran: list[Outcome] = []  # the ops' outcomes in the last pass that ran them all
        try:
            try:
                txn, ran = self._run_ops(conn, batch, now, look_up_stored_ids=False)
            except FlushFailed as exc:
                if not exc.stored_id:
                    ran = exc.outcomes  # its ops' own bugs are still logged, below
                    raise
                # a retry of an append committed before (or an id reused): run the group again, with lookups
                conn.execute("ROLLBACK")
                if self.metrics is not None:
                    self.metrics.group_commit_reruns.inc()
                txn, ran = self._run_ops(conn, batch, now, look_up_stored_ids=True)
            started = time.perf_counter()
            conn.execute("COMMIT")
            outcomes = ran
            if self.metrics is not None:
                self.metrics.sync_latency.observe(time.perf_counter() - started)
                self.metrics.batch_requests.observe(len(batch))
                self.metrics.batch_events.observe(txn.last_position - self.head)
        except Exception as exc:  # storage errors, and any bug outside the ops: fail the batch, keep the writer
            log.exception("group commit failed")
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback of a failed group commit failed")
            failure = Unavailable(f"storage error: {exc}")
            outcomes = [(future, loop, None, failure) for _op, future, loop, _weight, _streams in batch]
        else:
            self.epochs = txn.epochs  # before the head: a reader that sees the new head sees its epochs
            if txn.rewrote_events:
                self.recent.clear()
            elif txn.flushed:  # before the head too: a fetch that sees the new head finds it here
                self.recent.add(txn.flushed, txn.last_position)
            self.head = txn.last_position
            self._last_created = max(now, txn.last_created)
            self._scavenged = txn.scavenged
            self._dirty.set()
        for *_, error in ran:  # an op's own bug, logged once however many passes ran it
            if getattr(error, "op_bug", None) is not None:
                log.error("write operation failed: %s", error.op_bug)
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for future, loop, result, error in outcomes:
            by_loop.setdefault(loop, []).append((future, result, error))
        for loop, settled in by_loop.items():  # one wake-up of each loop per batch, not one per request
            loop.call_soon_threadsafe(_settle_all, settled)

    def _run_ops(self, conn: sqlite3.Connection, batch: list, now: int, *, look_up_stored_ids: bool
                 ) -> tuple[WriteTxn, list[Outcome]]:
        """Begin the group's transaction and run its ops in it, each op's own error undoing only that op; the
        transaction is left open, everything written, for the caller to commit. Raises FlushFailed when
        writing what the ops buffered fails."""
        txn = WriteTxn(conn, self.head, now, self.epoch, self.epochs, scavenged=self._scavenged,
                       look_up_stored_ids=look_up_stored_ids)
        outcomes: list[Outcome] = []
        conn.execute("BEGIN IMMEDIATE")
        txn.prefetch_rows(stream for item in batch for stream in item[4])
        for op, future, loop, _weight, _streams in batch:
            saved_position, saved_epochs = txn.last_position, txn.epochs
            txn.begin_op()
            try:
                result = op(txn)
                txn.end_op()
                outcomes.append((future, loop, result, None))
            except FlushFailed:
                raise
            except Exception as exc:  # the op's own error: undo its writes only
                txn.undo_op()
                txn.last_position, txn.epochs = saved_position, saved_epochs
                if not isinstance(exc, LogError):  # a bug: the caller gets a 503, the writer logs it (once)
                    # kept as text: the exception itself would tie its traceback's frames (this one's
                    # outcomes, the transaction) into a cycle that only a full collection frees
                    bug = "".join(traceback.format_exception(exc))
                    exc = Unavailable(f"write failed: {exc}")
                    exc.op_bug = bug
                exc.observed_position = saved_position  # the log state the refusal was decided on
                # without its traceback: its frames (this one's outcomes, holding it) would form a cycle
                outcomes.append((future, loop, None, exc.with_traceback(None)))
        try:
            txn.flush()
        except FlushFailed as exc:
            exc.outcomes = outcomes
            raise
        return txn, outcomes

    def _sync_loop(self) -> None:
        """Durability `interval`: commits are not synced one by one; the WAL is synced here periodically."""
        wal = str(self.path) + "-wal"
        while not self._closed:
            self._dirty.wait()
            self._dirty.clear()
            try:
                fd = os.open(wal, os.O_RDONLY)
                try:
                    started = time.perf_counter()
                    os.fsync(fd)
                    if self.metrics is not None:
                        self.metrics.sync_latency.observe(time.perf_counter() - started)
                finally:
                    os.close(fd)
            except FileNotFoundError:
                pass
            time.sleep(self.sync_interval)  # the sync cadence itself, not a synchronisation

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database file in the background, and keep the WAL from growing without end."""
        conn = connect(self.path, synchronous="FULL" if self.durability == "sync" else "NORMAL", cache_kib=1024)
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY):
                try:
                    if checkpoint(conn, self._stopping):
                        self._rewind_wal.set()
                except sqlite3.Error:
                    log.exception("background checkpoint failed")
        finally:
            conn.close()

    # epochs ----------------------------------------------------------------------------------
    def epoch_at(self, position: int) -> int:
        """The epoch of the entry at `position` (of the run holding it); 0 for position 0 or an empty log."""
        found = 0
        for epoch, start in self.epochs:
            if start > position:
                break
            found = epoch
        return found if position > 0 else 0

    def end_of_epoch(self, epoch: int) -> tuple[int, int]:
        """(E, P): E the newest epoch at or below `epoch` in this log, P the last position of its run
        (0, 0) when the log has no entry of such an epoch."""
        found, end = 0, 0
        for i, (e, _start) in enumerate(self.epochs):
            if e > epoch:
                break
            found = e
            end = self.epochs[i + 1][1] - 1 if i + 1 < len(self.epochs) else self.head
        return found, end

    # reads -----------------------------------------------------------------------------------
    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True, synchronous="NORMAL")
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    def _run_read(self, fn: ReadOp, args: tuple) -> Any:
        conn = self._reader_conn()
        conn.execute("BEGIN")
        try:
            return fn(conn, *args)
        finally:
            conn.execute("COMMIT")

    async def read(self, fn: ReadOp, *args) -> Any:
        """Run fn(conn, *args) on a reader thread in one read transaction (a consistent snapshot)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._read_lock:
            if self._closed or not self._readers:
                raise Unavailable("the node is shutting down")
            self._read_queue.put((fn, args, future, loop))
        return await future

    def _reader_loop(self) -> None:
        """Reads from one queue, each result handed back with one call_soon_threadsafe: a ThreadPoolExecutor hop
        (a concurrent and an asyncio future chained by callbacks) cost a 4-event read more than the read itself."""
        while True:
            item = self._read_queue.get()
            if item is _STOP:
                return
            fn, args, future, loop = item
            try:
                settled = [(future, self._run_read(fn, args), None)]
            except BaseException as exc:  # the caller's to handle, as it would be from an executor
                # the frames' locals go (their lines stay): a cursor kept alive by the traceback would hold its
                # statement open, pinning a WAL snapshot that checkpoints then wait for
                traceback.clear_frames(exc.__traceback__)
                settled = [(future, None, exc)]
            try:
                loop.call_soon_threadsafe(_settle_all, settled)
            except RuntimeError:  # the caller's loop is closed: nobody waits for this read
                pass
            del item, fn, args, future, settled  # nothing of this read outlives it while the thread waits


def checkpoint(conn: sqlite3.Connection, stopping: threading.Event | None = None) -> bool:
    """A PASSIVE checkpoint (it never blocks the writer or readers); True when the WAL has grown past
    WAL_REWIND_FRAMES and is nearly all copied, so the writer should copy the rest itself.

    SQLite rewinds the WAL only when a write transaction starts after a checkpoint that copied every frame. A
    checkpoint beside a busy writer never does (the writer adds frames while it copies), so under steady load
    the WAL would grow for as long as the load lasts. Passive rounds here copy what came in meanwhile; the last
    few frames are left to the writer between two transactions, where nothing is added while it copies."""
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if busy or frames <= WAL_REWIND_FRAMES:  # busy: another checkpoint ran (frames are -1 then)
        return False
    for _round in range(WAL_CATCH_UP_ROUNDS):  # each round copies only what came in during the one before
        if frames - copied <= WAL_REWIND_FRAMES // 4:
            return True
        if stopping is not None and stopping.is_set():
            return False
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy:
            return False
    return frames - copied <= WAL_REWIND_FRAMES // 4


def _settle_all(settled: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, result, error in settled:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _row_batches(conn: sqlite3.Connection, columns: str, batch: int) -> Iterable[list]:
    """Every row of `columns` (the first is the position), in position order, in lists of up to `batch`."""
    after = 0
    while True:
        rows = conn.execute(f"SELECT {columns} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                            (after, batch)).fetchall()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def checked_batches(conn: sqlite3.Connection, batch: int = 5000) -> Iterable[tuple[int, list[int]]]:
    """One pass over every record, in position order: (records checked, positions found corrupt) per batch. A
    record is corrupt when its checksum fails, or (format 3) when its stored reply text fails its own checksum or
    is not the text the record renders. A format-1 or 2 file is read without changing it (format 1's records are
    all JSON, flags 0)."""
    names = {column[1] for column in conn.execute("PRAGMA table_info(events)")}
    if "json" not in names:
        columns = _PLAIN_COLUMNS if "flags" in names else _PLAIN_COLUMNS.replace("flags", "0 AS flags")
        for rows in _row_batches(conn, columns, batch):
            records = [record_from_row(row) for row in rows]
            yield len(rows), [r.position for r in records if r.compute_checksum() != r.checksum]
        return
    for rows in _row_batches(conn, f"{RECORD_COLUMNS}, json, json_crc", batch):
        corrupt = []
        for row in rows:
            record, text = record_from_row(row), bytes(row[11])
            if (record.compute_checksum() != record.checksum or crc32c.crc32c(text) != row[12]
                    or record_json(record.id, record.stream, record.type, record.data, record.metadata, record.flags,
                                   record.version, record.position, record.created)[0] != text):
                corrupt.append(record.position)
        yield len(rows), corrupt
