"""The event-id index, as an LSM tree keeps its keys: the random ids of the newest records in an in-memory table
of the writer's connection (the window, rebuilt from the log's tail on open), older ones in sorted runs (durable
tables the window is written into in key order, merged four at a time into one of the next level), and the
UUIDv7 ids in `event_ids`.

Event ids made by clients are often random (UUIDv4). A durable B-tree keyed by them takes each new id on a random
leaf, so a group commit of a few thousand events dirtied as many index pages, each written to the WAL and again
by the checkpoint (0.3-0.5x the appends/s of node-made ids at 10 M events). Writing a million sorted ids at once
writes each page once for the ids on it. Format 4 merged the window into one table, whose every leaf a merge then
rewrote: a cost per id that grew with the log (3-6 us at 10 M ids, ten times that at 100 M). A run is written as
a new table, at its end (~0.6 us per id); runs of one level are merged when there are RUN_FANIN of them, so an id
is written once per level (log4 of the log's random ids over the window's size: two or three times at 10 M ids).
Time-ordered ids (UUIDv7: the node's own, and the Python client's) land at the end of `event_ids`, a page or two
per commit: they go there at once, in the transaction of their record, and never pass through the window.

What holds between transactions:
- every record at a position at or below `merged_through` (settings key `ids_merged_through`) whose id is not a
  UUIDv7 has its id in a run (or, in a log of format 4 or earlier, in `event_ids`), and every record whose id is a
  UUIDv7 has its id in `event_ids`;
- every other record above `merged_through` has its id in the window;
- the settings key `id_runs` lists the runs (oldest first) and the merge of runs in progress, if any.
Rows of any table may name a position whose record is gone (scavenged, trimmed or truncated, or since
overwritten by a truncation's successor): a lookup joins the records and keeps only those with the id it asks
for. Writing the window into a run, and merging runs, keeps the newest row of an id (the newest run's, the
window's over a run's). Both go a slice per transaction between group commits, and a run being written is
already listed: every id is in one of the tables after each slice. A window write starts when the window holds
WINDOW_MERGE_ROWS ids or the head is MERGE_SPAN_POSITIONS past `merged_through`, so that start-up, which reads
the records past it, reads a bounded tail of the log whatever its ids.

The writer checks the random ids it is given against a Bloom filter of every random id of the log first
(idfilter.py), and probes the tables only for those the filter may hold (UUIDv7 ids: in `event_ids` only).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import idfilter
from .idfilter import IdFilter, key
from .schema import ID_FILTER, ID_RUNS, IDS_MERGED_THROUGH, RECORD_COLUMNS
from .streams import setting

log = logging.getLogger(__name__)

WINDOW = "idwindow"
WINDOW_TABLE = f"{WINDOW}.ids"
BASE_TABLE = "main.event_ids"  # UUIDv7 ids, and the random ids formats 3 and 4 merged
RUN_PREFIX = "event_ids_run_"
WINDOW_MERGE_ROWS = 1 << 20  # up to ~50 MB of memory
MERGE_SLICE_ROWS = 1 << 14  # ids per merge transaction: ~10-20 ms of the writer (0.6-1.2 us per id)
RUN_FANIN = 4  # runs of one level merged into one of the next
# a window write also starts once the head is this far past the merged position, however few ids it holds (a
# log of UUIDv7 ids has none): start-up reads the records past it, so that read stays bounded
MERGE_SPAN_POSITIONS = 1 << 21
LOOKUP_CHUNK = 300  # ids per lookup statement (records_sql binds each once per table, and once more)


def _marks(count: int) -> str:
    return ",".join("?" * count)


def records_sql(count: int, tables: Sequence[str]) -> str:
    """The records that hold `count` ids, looked up in each of `tables` (bound 1 + len(tables) times, see
    `bind`)."""
    marks = _marks(count)
    held = " UNION ALL ".join(f"SELECT position FROM {table} WHERE id IN ({marks})" for table in tables)
    return f"SELECT {RECORD_COLUMNS} FROM main.events WHERE id IN ({marks}) AND position IN ({held})"


def bind(ids: Sequence[bytes], tables: Sequence[str]) -> list[bytes]:
    return list(ids) * (1 + len(tables))


def chunks(ids: Sequence[bytes]):
    for i in range(0, len(ids), LOOKUP_CHUNK):
        yield ids[i:i + LOOKUP_CHUNK]


def any_stored(conn: sqlite3.Connection, ids: Sequence[bytes], tables: Sequence[str]) -> bool:
    """Whether a record of the log (as the connection's transaction sees it) holds any of these ids: UUIDv7 ones
    looked up in `event_ids`, others in each of `tables` (the random-id tables, IdWindow.tables). Most ids asked
    about are fresh: each table is probed alone, and only what one holds is checked against the records."""
    time_ordered: list[bytes] = []
    others: list[bytes] = []
    for event_id in ids:
        (time_ordered if idfilter.is_uuid7(event_id) else others).append(event_id)
    for chosen, where in ((time_ordered, (BASE_TABLE,)), (others, tables)):
        for chunk in chunks(chosen):
            marks = _marks(len(chunk))
            held = []
            for table in where:
                held += conn.execute(f"SELECT position, id FROM {table} WHERE id IN ({marks})", chunk).fetchall()
            if any(conn.execute("SELECT 1 FROM main.events WHERE position = ? AND id = ?", row).fetchone()
                   for row in held):
                return True
    return False


# the version nibble of a UUID is the high half of its seventh byte
_UUID7 = "substr(id, 7, 1) BETWEEN x'70' AND x'7f'"


def index_ids(conn: sqlite3.Connection, first: int, last: int) -> int:
    """Index the ids of the records at positions first..last (just inserted, in the caller's transaction): the
    UUIDv7 ones in `event_ids`, the others in the window (how many: the return value)."""
    conn.execute(f"INSERT OR REPLACE INTO {BASE_TABLE} (id, position) SELECT id, position FROM main.events "
                 f"WHERE position BETWEEN ? AND ? AND {_UUID7}", (first, last))
    return add_to_window(conn, first, last)


def add_to_window(conn: sqlite3.Connection, first: int, last: int) -> int:
    return conn.execute(f"INSERT OR REPLACE INTO {WINDOW_TABLE} (id, position) SELECT id, position FROM main.events "
                        f"WHERE position BETWEEN ? AND ? AND NOT {_UUID7}", (first, last)).rowcount


def merged_through(conn: sqlite3.Connection) -> int:
    return int(setting(conn, IDS_MERGED_THROUGH) or 0)


def set_merged_through(conn: sqlite3.Connection, position: int) -> None:
    conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (IDS_MERGED_THROUGH, str(position)))


def forget_after(conn: sqlite3.Connection, position: int) -> None:
    """A truncation removed every record after `position` (in the caller's transaction): the window forgets them,
    and the runs and `event_ids` no longer claim positions past it (their rows there are stale, which lookups
    allow for)."""
    conn.execute(f"DELETE FROM {WINDOW_TABLE} WHERE position > ?", (position,))
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


@dataclass
class Run:
    """One sorted run of random ids: its table (in the main database), its level (0: written from the window;
    level n + 1: RUN_FANIN runs of level n merged) and about how many ids it holds."""

    table: str
    level: int
    rows: int = 0

    @property
    def qualified(self) -> str:
        return f"main.{self.table}"


@dataclass
class RunMerge:
    """Runs of one level (oldest first) being merged into `into`, a slice per transaction."""

    sources: list[Run]
    into: Run


class RunSet:
    """The runs, oldest first, the merge of runs in progress, and the number the next run's table takes: what the
    settings key `id_runs` holds (saved in the transaction that changes it)."""

    def __init__(self, runs: list[Run] | None = None, merge: RunMerge | None = None, next_number: int = 1) -> None:
        self.runs = list(runs or [])
        self.merge = merge
        self.next_number = next_number

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> "RunSet":
        value = setting(conn, ID_RUNS)
        if value is None:
            return cls()
        state = json.loads(value)
        runs = {table: Run(table, level, rows) for table, level, rows in state["runs"]}
        merge = state.get("merge")
        return cls(list(runs.values()),
                   RunMerge([runs[t] for t in merge["sources"]], runs[merge["into"]]) if merge else None,
                   state["next"])

    def save(self, conn: sqlite3.Connection) -> None:
        merge = ({"sources": [r.table for r in self.merge.sources], "into": self.merge.into.table}
                 if self.merge is not None else None)
        state = {"runs": [[r.table, r.level, r.rows] for r in self.runs], "merge": merge, "next": self.next_number}
        conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (ID_RUNS, json.dumps(state)))

    def new_run(self, conn: sqlite3.Connection, level: int) -> Run:
        """A new empty run table (in the caller's transaction), not yet listed."""
        run = Run(f"{RUN_PREFIX}{self.next_number}", level)
        self.next_number += 1
        conn.execute(f"CREATE TABLE {run.qualified} (id BLOB PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID")
        return run

    def due_merge(self) -> list[Run] | None:
        """The oldest RUN_FANIN runs of the lowest level that has that many, or None."""
        for level in sorted({r.level for r in self.runs}):
            of_level = [r for r in self.runs if r.level == level]
            if len(of_level) >= RUN_FANIN:
                return of_level[:RUN_FANIN]
        return None

    def tables(self) -> tuple[str, ...]:
        """The tables that may hold a random id, newest first."""
        return (WINDOW_TABLE, *(r.qualified for r in reversed(self.runs)), BASE_TABLE)


class IdWindow:
    """The writer's side of the index: the window table on its connection, the runs and the merge in progress,
    and the filter of random ids (saved in the data directory). Only the writer thread uses it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.filter = IdFilter()
        self.rows = 0  # about how many ids the window holds (what starts its write into a run)
        self.merged_through = 0  # as the settings hold it
        self.run_set = RunSet()
        self.tables: tuple[str, ...] = self.run_set.tables()  # where a lookup of random ids looks
        # the filter's file, the position it holds every id through, and the filter's count then (None: not saved)
        self._saved: tuple[str, int, int] | None = None
        self.merging_through: int | None = None  # the window's write in progress takes its ids up to here
        self._writing: Run | None = None  # ... into this run (None until its first slice with ids)
        self._after: bytes = b""  # ... with keys above this one still to take

    def attach(self, conn: sqlite3.Connection, *, head: int) -> None:
        """Create the window on the writer's connection and fill it from the records above `merged_through` (at
        most about WINDOW_MERGE_ROWS plus a write's worth: start-up does not grow with the log)."""
        conn.execute(f"ATTACH DATABASE ':memory:' AS {WINDOW}")
        conn.execute(f"CREATE TABLE {WINDOW_TABLE} (id BLOB PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID")
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
            self.run_set = RunSet.load(conn)
            self.tables = self.run_set.tables()
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
        for select in (f"SELECT id FROM {BASE_TABLE} WHERE NOT {_UUID7}",
                       *(f"SELECT id FROM {run.qualified}" for run in self.run_set.runs)):
            cursor = conn.execute(select)
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
        """After a committed truncation to `position`: the window's write in progress takes nothing above it."""
        if self.merging_through is not None and self.merging_through > position:
            self.merging_through = position
        self.merged_through = min(self.merged_through, position)

    def _reload_runs(self, conn: sqlite3.Connection) -> None:
        """After a slice rolled back: the runs as committed (a run it created is gone with the transaction, so
        the window's write in progress goes on into a new one; a run listed before stays listed)."""
        self.run_set = RunSet.load(conn)
        self._writing = None
        self.tables = self.run_set.tables()

    def _window_due(self, head: int) -> bool:
        return (self.merging_through is not None or self.rows >= WINDOW_MERGE_ROWS
                or head - self.merged_through >= MERGE_SPAN_POSITIONS)

    def merge_due(self, head: int) -> bool:
        return (self._window_due(head) or self.run_set.merge is not None
                or self.run_set.due_merge() is not None)

    def merge_slice(self, conn: sqlite3.Connection, head: int) -> None:
        """The next slice of the index's upkeep, in a transaction of its own: of the window's write into a run
        first (which keeps the window's memory bounded), else of a merge of runs."""
        if self._window_due(head):
            self._write_window_slice(conn, head)
        else:
            self._merge_runs_slice(conn)

    def _write_window_slice(self, conn: sqlite3.Connection, head: int) -> None:
        """Write the next slice of the window (in key order) into a new run; the last slice of a write records its
        position. A write takes the ids up to the head it started at."""
        if self.merging_through is None:
            self.merging_through, self._writing, self._after = head, None, b""
        through, after = self.merging_through, self._after
        bound = conn.execute(f"SELECT id FROM {WINDOW_TABLE} WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?",
                             (after, MERGE_SLICE_ROWS - 1)).fetchone()
        upper = "AND id <= ?" if bound is not None else ""
        args = (after, bound[0], through) if bound is not None else (after, through)
        run_set, run = self.run_set, self._writing
        conn.execute("BEGIN IMMEDIATE")
        try:
            taken = f"FROM {WINDOW_TABLE} WHERE id > ? {upper} AND position <= ?"
            if run is None and conn.execute(f"SELECT 1 {taken} LIMIT 1", args).fetchone() is not None:
                run = run_set.new_run(conn, 0)
                run_set.runs.append(run)
            if run is not None:
                run.rows += conn.execute(f"INSERT OR REPLACE INTO {run.qualified} (id, position) SELECT id, position "
                                         f"{taken}", args).rowcount
                removed = conn.execute(f"DELETE {taken}", args).rowcount
                run_set.save(conn)
            else:
                removed = 0
            if bound is None:
                set_merged_through(conn, through)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self._reload_runs(conn)
            raise
        self._writing = run
        self.tables = run_set.tables()
        self.rows = max(0, self.rows - removed)
        if bound is None:
            self.merging_through, self._writing, self.merged_through = None, None, through
            self.save_filter(conn, head=head)
        else:
            self._after = bytes(bound[0])

    def _merge_runs_slice(self, conn: sqlite3.Connection) -> None:
        """Move the next slice (in key order) of RUN_FANIN runs of one level into one run of the next, keeping the
        newest run's row of an id; the last slice drops them."""
        run_set = self.run_set
        conn.execute("BEGIN IMMEDIATE")
        try:
            merge = run_set.merge
            if merge is None:
                sources = run_set.due_merge()
                assert sources is not None
                into = run_set.new_run(conn, sources[0].level + 1)
                run_set.runs.insert(run_set.runs.index(sources[0]), into)  # as old as its sources, among the runs
                merge = run_set.merge = RunMerge(sources, into)
            # the slice: up to the key MERGE_SLICE_ROWS ids on, in proportion, in the largest source (what is
            # below it in every source was moved by the slices before)
            largest = max(merge.sources, key=lambda r: r.rows)
            total = sum(r.rows for r in merge.sources) or 1
            offset = max(1, MERGE_SLICE_ROWS * largest.rows // total)
            bound = conn.execute(f"SELECT id FROM {largest.qualified} ORDER BY id LIMIT 1 OFFSET ?",
                                 (offset - 1,)).fetchone()
            upper, args = ("WHERE id <= ?", (bound[0],)) if bound is not None else ("", ())
            for source in reversed(merge.sources):  # newest first: an id's newest row is the one kept
                merge.into.rows += conn.execute(f"INSERT OR IGNORE INTO {merge.into.qualified} (id, position) "
                                                f"SELECT id, position FROM {source.qualified} {upper}",
                                                args).rowcount
            for source in merge.sources:
                source.rows = max(0, source.rows - conn.execute(f"DELETE FROM {source.qualified} {upper}",
                                                                args).rowcount)
            if bound is None:
                for source in merge.sources:
                    conn.execute(f"DROP TABLE {source.qualified}")
                    run_set.runs.remove(source)
                run_set.merge = None
            run_set.save(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self._reload_runs(conn)
            raise
        self.tables = run_set.tables()
