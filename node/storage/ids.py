"""The event-id index, as an LSM tree keeps its keys: the random ids of the newest records in an in-memory table
of the writer's connection (the window, rebuilt from the log's tail on open), everything else in a durable table
(`event_ids`) that the writer merges the window into in key order, a slice per transaction.

Event ids made by clients are often random (UUIDv4). A durable B-tree keyed by them takes each new id on a random
leaf, so a group commit of a few thousand events dirtied as many index pages, each written to the WAL and again
by the checkpoint (0.3-0.5x the appends/s of node-made ids at 10 M events). Merging a million sorted ids at once
writes each touched page once for all the ids that land on it. Time-ordered ids (UUIDv7: the node's own, and the
Python client's) land at the end of `event_ids`, a page or two per commit: they go there at once, in the
transaction of their record, and never pass through the window.

What holds between transactions:
- every record at a position at or below `merged_through` (settings key `ids_merged_through`), and every record
  whose id is a UUIDv7, has its id in `event_ids`, with the position of the newest record that had it;
- every other record above `merged_through` has its id in the window.
Rows of either table may name a position whose record is gone (scavenged, trimmed or truncated, or since
overwritten by a truncation's successor): a lookup joins the records and keeps only those with the id it asks
for, and a merge replaces an id's row with its newest position. A merge starts when the window holds
WINDOW_MERGE_ROWS ids or the head is MERGE_SPAN_POSITIONS past `merged_through`, so that start-up, which reads
the records past it, reads a bounded tail of the log whatever its ids.

The writer checks the random ids it is given against a Bloom filter of every random id of the log first
(idfilter.py), and probes the tables only for those the filter may hold (and for UUIDv7 ids).
"""
from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Sequence

from . import idfilter
from .idfilter import IdFilter, key
from .schema import ID_FILTER, IDS_MERGED_THROUGH, RECORD_COLUMNS
from .streams import setting

log = logging.getLogger(__name__)

WINDOW = "idwindow"
WINDOW_MERGE_ROWS = 1 << 20  # up to ~50 MB of memory; a merge of this many costs ~3-4 us per id at 10 M ids stored
MERGE_SLICE_ROWS = 1 << 14  # ids per merge transaction: about 50-60 ms of the writer at that cost per id
# a merge also starts once the head is this far past the merged position, however few ids the window holds (a
# log of UUIDv7 ids has none): start-up reads the records past it, so that read stays bounded
MERGE_SPAN_POSITIONS = 1 << 21
LOOKUP_CHUNK = 300  # ids per lookup statement (records_sql binds each three times)


def _marks(count: int) -> str:
    return ",".join("?" * count)


def records_sql(count: int) -> str:
    """The records that hold `count` ids (bound three times over, see `bind`)."""
    marks = _marks(count)
    return (f"SELECT {RECORD_COLUMNS} FROM main.events WHERE id IN ({marks}) AND position IN ("
            f"SELECT position FROM {WINDOW}.ids WHERE id IN ({marks}) "
            f"UNION ALL SELECT position FROM main.event_ids WHERE id IN ({marks}))")


def bind(ids: Sequence[bytes]) -> list[bytes]:
    return [*ids, *ids, *ids]


def chunks(ids: Sequence[bytes]):
    for i in range(0, len(ids), LOOKUP_CHUNK):
        yield ids[i:i + LOOKUP_CHUNK]


def any_stored(conn: sqlite3.Connection, ids: Sequence[bytes]) -> bool:
    """Whether a record of the log (as the connection's transaction sees it) holds any of these ids. Most ids
    asked about are fresh: each part of the index is probed alone, and only what either holds is checked
    against the records."""
    for chunk in chunks(ids):
        marks = _marks(len(chunk))
        held = conn.execute(f"SELECT position, id FROM {WINDOW}.ids WHERE id IN ({marks})", chunk).fetchall()
        held += conn.execute(f"SELECT position, id FROM main.event_ids WHERE id IN ({marks})", chunk).fetchall()
        if any(conn.execute("SELECT 1 FROM main.events WHERE position = ? AND id = ?", row).fetchone()
               for row in held):
            return True
    return False


# the version nibble of a UUID is the high half of its seventh byte
_UUID7 = "substr(id, 7, 1) BETWEEN x'70' AND x'7f'"


def index_ids(conn: sqlite3.Connection, first: int, last: int) -> int:
    """Index the ids of the records at positions first..last (just inserted, in the caller's transaction): the
    UUIDv7 ones in `event_ids`, the others in the window (how many: the return value)."""
    conn.execute("INSERT OR REPLACE INTO main.event_ids (id, position) SELECT id, position FROM main.events "
                 f"WHERE position BETWEEN ? AND ? AND {_UUID7}", (first, last))
    return add_to_window(conn, first, last)


def add_to_window(conn: sqlite3.Connection, first: int, last: int) -> int:
    return conn.execute(f"INSERT OR REPLACE INTO {WINDOW}.ids (id, position) SELECT id, position FROM main.events "
                        f"WHERE position BETWEEN ? AND ? AND NOT {_UUID7}", (first, last)).rowcount


def merged_through(conn: sqlite3.Connection) -> int:
    return int(setting(conn, IDS_MERGED_THROUGH) or 0)


def set_merged_through(conn: sqlite3.Connection, position: int) -> None:
    conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (IDS_MERGED_THROUGH, str(position)))


def forget_after(conn: sqlite3.Connection, position: int) -> None:
    """A truncation removed every record after `position` (in the caller's transaction): the window forgets them,
    and `event_ids` no longer claims positions past it (its rows there are stale, which lookups allow for)."""
    conn.execute(f"DELETE FROM {WINDOW}.ids WHERE position > ?", (position,))
    if merged_through(conn) > position:
        set_merged_through(conn, position)
    saved = idfilter.decode_state(setting(conn, ID_FILTER))
    if saved is not None and saved[1] > position:  # what is written there next is not in the saved filter
        _set_filter_state(conn, saved[0], position)


def _set_filter_state(conn: sqlite3.Connection, name: str, through: int) -> None:
    conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                 (ID_FILTER, idfilter.encode_state(name, through)))


def random_ids(conn: sqlite3.Connection, first: int, last: int = 1 << 62) -> list[bytes]:
    """The ids of the records at positions first..last that are not UUIDv7 (those the window and filter hold)."""
    return [bytes(r[0]) for r in conn.execute(
        f"SELECT id FROM main.events WHERE position BETWEEN ? AND ? AND NOT {_UUID7}", (first, last))]


class IdWindow:
    """The writer's side of the index: the window table on its connection, the merge in progress, and the filter
    of random ids (saved in the data directory). Only the writer thread uses it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.filter = IdFilter()
        self.rows = 0  # about how many ids the window holds (what starts a merge)
        self.merged_through = 0  # as the settings hold it
        # the filter's file, the position it holds every id through, and the filter's count then (None: not saved)
        self._saved: tuple[str, int, int] | None = None
        self.merging_through: int | None = None  # the merge in progress takes the window's ids up to here
        self._after: bytes = b""  # ... with keys above this one still to take

    def attach(self, conn: sqlite3.Connection, *, head: int) -> None:
        """Create the window on the writer's connection and fill it from the records above `merged_through` (at
        most about WINDOW_MERGE_ROWS plus a merge's worth: start-up does not grow with the log)."""
        conn.execute(f"ATTACH DATABASE ':memory:' AS {WINDOW}")
        conn.execute(f"CREATE TABLE {WINDOW}.ids (id BLOB PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute("BEGIN IMMEDIATE")
        try:
            through = merged_through(conn)
            if through > head:  # records past the head are gone: what is written there next is not merged
                set_merged_through(conn, head)
                through = head
            self.rows = add_to_window(conn, through + 1, 1 << 62)
            if not self.rows and through < head:  # every record past it has its id in event_ids (UUIDv7)
                set_merged_through(conn, head)
                through = head
            self.merged_through = through
            self._load_filter(conn, through, head)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if self._saved is None and head:  # built, not read: save it so that the next start reads it
            self.save_filter(conn, head=head)

    def _load_filter(self, conn: sqlite3.Connection, through: int, head: int) -> None:
        """The saved filter with the ids of the records above what it holds, or (with no usable file: a log of
        an earlier release, a lost file) a filter built from the whole index."""
        saved = idfilter.decode_state(setting(conn, ID_FILTER))
        loaded = idfilter.read_file(self.data_dir, saved[0]) if saved is not None else None
        if loaded is not None:
            name, holds_through = saved
            if holds_through > head:  # records past the head are gone: what is written there next is not in it
                _set_filter_state(conn, name, head)
                holds_through = head
            self.filter, self._saved = loaded, (name, holds_through, loaded.count)
            self.filter.add(idfilter.keys(random_ids(conn, holds_through + 1)))
            return
        started = time.perf_counter()
        self.filter, self._saved = IdFilter(), None
        cursor = conn.execute(f"SELECT id FROM main.event_ids WHERE NOT {_UUID7}")
        while rows := cursor.fetchmany(65536):
            self.filter.add([key(bytes(r[0])) for r in rows])
        self.filter.add(idfilter.keys(random_ids(conn, through + 1)))
        if self.filter.count:
            log.info("built the filter of %d random event ids in %.1f s (once: it is saved)", self.filter.count,
                     time.perf_counter() - started)

    def save_filter(self, conn: sqlite3.Connection, *, head: int) -> None:
        """Record that the filter holds every random id of the records up to `head`: in a new file if ids were
        added since it was last saved, else (no record with a random id was written since: the saved file
        holds them all, whatever a truncation did) only the position. Between the writer's transactions. A
        failure is logged: the filter in memory stays right, and an older file (or a rebuild) serves the next
        start."""
        unchanged = self._saved is not None and self._saved[2] == self.filter.count
        if unchanged and self._saved[1] == head:
            return
        name = self._saved[0] if unchanged else idfilter.new_file_name()
        try:
            if not unchanged:
                idfilter.write_file(self.data_dir, name, self.filter.to_bytes())
            conn.execute("BEGIN IMMEDIATE")
            try:
                _set_filter_state(conn, name, head)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._saved = (name, head, self.filter.count)
            if not unchanged:
                idfilter.remove_files_except(self.data_dir, name)
        except (OSError, sqlite3.Error):
            log.exception("saving the filter of event ids failed (the next start reads an older one, or rebuilds)")

    def added(self, rows: int) -> None:
        self.rows += rows

    def truncated(self, position: int) -> None:
        """After a committed truncation to `position`: a merge in progress takes nothing above it."""
        if self.merging_through is not None and self.merging_through > position:
            self.merging_through = position
        self.merged_through = min(self.merged_through, position)

    def merge_due(self, head: int) -> bool:
        return (self.merging_through is not None or self.rows >= WINDOW_MERGE_ROWS
                or head - self.merged_through >= MERGE_SPAN_POSITIONS)

    def merge_slice(self, conn: sqlite3.Connection, head: int) -> None:
        """Merge the next slice of the window (in key order) into `event_ids`, in a transaction of its own; the
        last slice of a merge records its position. A merge takes the ids up to the head it started at."""
        if self.merging_through is None:
            self.merging_through, self._after = head, b""
        through, after = self.merging_through, self._after
        bound = conn.execute(f"SELECT id FROM {WINDOW}.ids WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?",
                             (after, MERGE_SLICE_ROWS - 1)).fetchone()
        upper = "AND id <= ?" if bound is not None else ""
        args = (after, bound[0], through) if bound is not None else (after, through)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"INSERT OR REPLACE INTO main.event_ids (id, position) SELECT id, position "
                         f"FROM {WINDOW}.ids WHERE id > ? {upper} AND position <= ?", args)
            removed = conn.execute(f"DELETE FROM {WINDOW}.ids WHERE id > ? {upper} AND position <= ?",
                                   args).rowcount
            if bound is None:
                set_merged_through(conn, through)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.rows = max(0, self.rows - removed)
        if bound is None:
            self.merging_through, self.merged_through = None, through
            self.save_filter(conn, head=head)
        else:
            self._after = bytes(bound[0])
