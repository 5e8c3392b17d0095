"""Typed queries of one stream's state: its row, its events as of a position, the newest event of a type; and the
settings and stream rows the log's maintenance (scavenge, trim, truncation) starts from. The log decides what
they mean (node/log.py); the SQL lives here."""
from __future__ import annotations

import sqlite3

from .records import StreamRow
from .schema import DATA_SQL
from .statements import STREAM_COLUMNS, stream_select_sql


def stream_values(conn: sqlite3.Connection, stream: str) -> tuple | None:
    """The stream's row as a tuple (StreamRow's fields), the writer's one-stream form of its prefetch."""
    row = conn.execute(stream_select_sql(1), (stream,)).fetchone()
    return tuple(row) if row is not None else None


def stream_row(conn: sqlite3.Connection, stream: str) -> StreamRow | None:
    values = stream_values(conn, stream)
    return StreamRow(*values) if values is not None else None


def last_position(conn: sqlite3.Connection, stream: str) -> int | None:
    """The position of the stream's newest event."""
    last = conn.execute("SELECT position FROM events WHERE stream = ? ORDER BY version DESC LIMIT 1",
                        (stream,)).fetchone()
    return last[0] if last else None


def newest_created(conn: sqlite3.Connection, stream: str) -> int | None:
    """When the stream's newest event was written."""
    last = conn.execute("SELECT created FROM events WHERE stream = ? ORDER BY version DESC LIMIT 1",
                        (stream,)).fetchone()
    return last[0] if last else None


def newest_through(conn: sqlite3.Connection, stream: str, position: int) -> tuple[int, int] | None:
    """(version, created) of the stream's newest event at or below `position`."""
    row = conn.execute("SELECT version, created FROM events WHERE stream = ? AND position <= ? "
                       "ORDER BY version DESC LIMIT 1", (stream, position)).fetchone()
    return tuple(row) if row is not None else None


def lowest_version_after(conn: sqlite3.Connection, stream: str, position: int) -> int | None:
    """The lowest version of the stream's events past `position`."""
    return conn.execute("SELECT min(version) FROM events WHERE stream = ? AND position > ?",
                        (stream, position)).fetchone()[0]


def newest_of_type(conn: sqlite3.Connection, stream: str, event_type: str, *, through: int | None = None
                   ) -> tuple[int, int, bytes] | None:
    """(version, created, data) of the stream's newest event of `event_type` (at or below position `through`)."""
    bound, args = ("", ()) if through is None else (" AND position <= ?", (through,))
    row = conn.execute(f"SELECT version, created, {DATA_SQL} FROM events WHERE stream = ? AND type = ?{bound} "
                       "ORDER BY version DESC LIMIT 1", (stream, event_type, *args)).fetchone()
    return (row[0], row[1], bytes(row[2])) if row is not None else None


def has_event_of_type(conn: sqlite3.Connection, stream: str, event_type: str, *, through: int) -> bool:
    return conn.execute("SELECT 1 FROM events WHERE stream = ? AND type = ? AND position <= ? LIMIT 1",
                        (stream, event_type, through)).fetchone() is not None


def has_version_at_or_below(conn: sqlite3.Connection, stream: str, version: int) -> bool:
    return conn.execute("SELECT 1 FROM events WHERE stream = ? AND version <= ? LIMIT 1",
                        (stream, version)).fetchone() is not None


def events_of_type(conn: sqlite3.Connection, stream: str, event_type: str, *, after: int, through: int
                   ) -> list[tuple[int, int]]:
    """(position, created) of the stream's events of `event_type` at positions in (after, through], in order."""
    return conn.execute("SELECT position, created FROM events WHERE stream = ? AND type = ? AND position > ? "
                        "AND position <= ? ORDER BY position", (stream, event_type, after, through)).fetchall()


def head_position(conn: sqlite3.Connection) -> int:
    """The newest position the caller's transaction sees (0: an empty log)."""
    return conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]


def event_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def setting(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return row[0] if row is not None else None


def system_rows_with_metadata(conn: sqlite3.Connection) -> list[StreamRow]:
    """The rows of `$`-streams (not `$$` metadata streams) that have metadata."""
    return [StreamRow(*r) for r in conn.execute(
        f"SELECT {STREAM_COLUMNS} FROM streams WHERE stream >= '$' AND stream < '%' "
        "AND substr(stream, 1, 2) != '$$' AND metadata IS NOT NULL").fetchall()]


def rows_with_retention(conn: sqlite3.Connection) -> list[StreamRow]:
    """The rows of every stream that has metadata or is hard deleted: what a scavenge may remove events of."""
    return [StreamRow(*r) for r in conn.execute(
        f"SELECT {STREAM_COLUMNS} FROM streams WHERE metadata IS NOT NULL OR deleted = 'hard'").fetchall()]
