"""The schema and its formats: the tables and indexes, the SQL that reads a record's payloads from its row, the
migration of older formats on open, and the full scan that checks every record (`verify`)."""
from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Iterable

import crc32c

from ..replyjson import record_json
from .records import AT_DATA, AT_DATA_AT, AT_METADATA, AT_POSITION, AT_TEXT, AT_TEXT_CRC, record_from_row, stored_row

log = logging.getLogger("evstore.storage")

DB_FILE = "evstore.db"
FORMAT_VERSION = "5"
IDS_MERGED_THROUGH = "ids_merged_through"  # settings key: see ids.py
ID_RUNS = "id_runs"  # settings key: see ids.py
ID_FILTER = "id_filter"  # settings key: see idfilter.py

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
-- the id index of UUIDv7 ids (and of random ones before format 5): see ids.py
CREATE TABLE IF NOT EXISTS event_ids (id BLOB PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID;
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
PLAIN_COLUMNS = "position, stream, version, id, type, data, metadata, created, epoch, checksum, flags"  # format 2's


def open_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema of a new log, or bring a log of an older format to this one (in one transaction)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    fmt = conn.execute("SELECT value FROM settings WHERE key = 'format'").fetchone() if "settings" in tables \
        else None
    if fmt is not None and fmt[0] not in ("1", "2", "3", "4", FORMAT_VERSION):
        raise RuntimeError(f"{path} has log format {fmt[0]}; this node reads formats 1 to 4 (migrated on open) "
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
        if fmt is not None and fmt[0] in ("1", "2", "3"):
            log.warning("migrating %s from log format %s to %s: moving the event-id index into its own table "
                        "(once; a few seconds per ten million events)", path, fmt[0], FORMAT_VERSION)
            _move_id_index(conn)
        if fmt is not None and fmt[0] == "4":
            # format 5 lists runs of random ids (ids.py), where a release of format 4 would not look; a log of
            # format 4 has none yet
            log.info("log %s: format 4 to %s (no data to change)", path, FORMAT_VERSION)
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
    for rows in row_batches(conn, PLAIN_COLUMNS, batch):
        stored = [stored_row(record_from_row(row)) for row in rows]
        conn.executemany("UPDATE events SET data = ?, metadata = ?, json = ?, json_crc = ?, data_at = ?, "
                         "data_len = ?, meta_at = ?, meta_len = ? WHERE position = ?",
                         [(row[AT_DATA], row[AT_METADATA], row[AT_TEXT], row[AT_TEXT_CRC], *row[AT_DATA_AT:],
                           row[AT_POSITION]) for row in stored])


def _move_id_index(conn: sqlite3.Connection) -> None:
    """Format 3 to 4, inside the caller's transaction: format 3's UNIQUE index of the events' ids becomes the
    `event_ids` table (read in key order from the index itself, which covers the position), every record merged
    (see ids.py)."""
    indexed = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'events_by_id'").fetchone()
    conn.execute("INSERT OR REPLACE INTO event_ids (id, position) SELECT id, position FROM events "
                 f"{'INDEXED BY events_by_id' if indexed else ''} ORDER BY id")
    conn.execute("DROP INDEX IF EXISTS events_by_id")
    head = conn.execute("SELECT max(position) FROM events").fetchone()[0] or 0
    conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (IDS_MERGED_THROUGH, str(head)))


def row_batches(conn: sqlite3.Connection, columns: str, batch: int) -> Iterable[list]:
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
        columns = PLAIN_COLUMNS if "flags" in names else PLAIN_COLUMNS.replace("flags", "0 AS flags")
        for rows in row_batches(conn, columns, batch):
            records = [record_from_row(row) for row in rows]
            yield len(rows), [r.position for r in records if r.compute_checksum() != r.checksum]
        return
    for rows in row_batches(conn, f"{RECORD_COLUMNS}, json, json_crc", batch):
        corrupt = []
        for row in rows:
            record, text = record_from_row(row), bytes(row[11])
            if (record.compute_checksum() != record.checksum or crc32c.crc32c(text) != row[12]
                    or record_json(record.id, record.stream, record.type, record.data, record.metadata, record.flags,
                                   record.version, record.position, record.created)[0] != text):
                corrupt.append(record.position)
        yield len(rows), corrupt
