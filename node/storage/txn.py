"""The write transaction: what a write operation may do inside the writer's group commit (WriteTxn), with
appends and stream rows buffered and written by a few multi-row statements when the group ends."""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Sequence

import crc32c

from ..errors import LogError, Unavailable
from ..replyjson import created_tail
from . import idfilter, ids as id_index
from .idfilter import IdFilter
from .records import (AT_CREATED, AT_EPOCH, AT_ID, AT_POSITION, CHECKSUM_PLACE, ROW_WIDTH, Record, ScavengedRecord,
                      StreamRow, payload_checksum, record_from_row, record_from_stored)
from .schema import DATA_SQL, METADATA_SQL
from .statements import (MAX_ROWS_PER_STATEMENT, SELECT_SIZES, SQL_VARIABLE_CHUNK, insert_sql, row_chunks,
                         stream_select_sql, stream_upsert_sql)
from .streams import stream_values


class FlushFailed(Exception):
    """Writing the buffered rows of a group commit failed: the whole commit is rolled back, then either run again
    with every id looked up (`stored_id`) or failed."""

    def __init__(self, message: str, *, stored_id: bool = False) -> None:
        super().__init__(message)
        self.stored_id = stored_id  # an event id already in the log: the group is run again, checking ids first
        self.outcomes: list = []  # of the pass whose flush failed


_MISSING = object()


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
                 id_tables: Sequence[str], look_up_stored_ids: bool = True,
                 id_filter: IdFilter | None = None) -> None:
        self._conn = conn
        self._id_filter = id_filter  # of the log's random ids: the flush adds the ones it writes
        self._id_tables = tuple(id_tables)  # where random ids are looked up (IdWindow.tables)
        self.scavenged = scavenged  # the log has scavenged ids to look up (or removes some in this txn)
        # False: an insert's lookup of its ids may skip the stored records (see records_by_ids)
        self.look_up_stored_ids = look_up_stored_ids
        self.last_position = last_position
        self.now = now
        self.epoch = epoch
        self.epochs = list(epochs or [])  # (epoch, first position) of each run of the log, ascending
        self.last_created = now
        self._events: list = []  # flat INSERT parameters of the buffered records, ROW_WIDTH per record
        self._event_ids: dict[bytes, int] = {}  # id -> index of its record in _events
        self._given_ids: list[bytes] = []  # client-made ids buffered (unless look_up_stored_ids: not looked up)
        self.window_rows = 0  # ids this transaction added to the id index's window
        self.truncated_to: int | None = None  # the lowest position a truncation in this transaction kept
        self._rows: dict[str, tuple | None] = {}  # stream rows as this transaction sees them (None: no row)
        self._dirty: set[str] = set()  # streams whose row is to be written
        self._new_epochs: list[tuple[int, int]] = []
        self._op_marks: tuple[int, int, int] = (0, 0, 0)
        self._op_undo: list[tuple[str, Any, bool]] = []
        self._op_savepoint = False
        self.flushed: list[list] = []  # the flat values of the records written, in position order
        self.rewrote_events = False  # SQL of an op removed, inserted or rolled back records: `flushed` is not all

    # op boundaries (the writer calls these around each op) ----------------------------------------
    def begin_op(self) -> None:
        self._op_marks = (len(self._events), len(self._new_epochs), len(self._given_ids))
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
            events_mark, epochs_mark, _ = self._op_marks
        del self._given_ids[self._op_marks[2]:]  # (empty since a flush of the op's own: nothing to undo)
        for i in range(events_mark, len(self._events), ROW_WIDTH):
            self._event_ids.pop(bytes(self._events[i + AT_ID]), None)
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
        """Write everything buffered to the tables (before COMMIT, and before an op's own SQL). Raises
        FlushFailed(stored_id=True) when an id whose lookup skipped the stored records is in one."""
        given, self._given_ids = self._given_ids, []
        suspects, id_keys = idfilter.sort_out(self._id_filter, given)
        if suspects and not self.look_up_stored_ids and id_index.any_stored(self._conn, suspects, self._id_tables):
            raise FlushFailed("an event id is in a stored record", stored_id=True)
        try:
            execute = self._conn.execute
            if self._new_epochs:
                self._conn.executemany("INSERT OR REPLACE INTO epochs (epoch, start) VALUES (?, ?)",
                                       self._new_epochs)
                self._new_epochs = []
            values = self._events
            if values:
                for offset, rows in row_chunks(len(values) // ROW_WIDTH):
                    execute(insert_sql(rows), values[offset * ROW_WIDTH:(offset + rows) * ROW_WIDTH])
                first, last = values[AT_POSITION], values[len(values) - ROW_WIDTH + AT_POSITION]
                windowed = id_index.index_ids(self._conn, first, last)
                self.window_rows += windowed
                self.flushed.append(values)
                self._events = []
                self._event_ids = {}
                if self._id_filter is not None:
                    if windowed != len(id_keys):  # a random id the client did not give (none today): read back
                        id_keys = idfilter.keys(id_index.random_ids(self._conn, first, last))
                    self._id_filter.add(id_keys)
            if self._dirty:
                rows = [self._rows[stream] for stream in self._dirty if self._rows.get(stream) is not None]
                params = [value for row in rows for value in row]
                for offset, count in row_chunks(len(rows)):
                    execute(stream_upsert_sql(count), params[offset * 6:(offset + count) * 6])
                self._dirty = set()
        except sqlite3.Error as exc:
            raise FlushFailed(str(exc)) from exc

    # stream rows ------------------------------------------------------------------------------
    def prefetch_rows(self, streams: Iterable[str]) -> None:
        """Read the rows of these streams with one statement per 512 (the ops of a batch ask for them next)."""
        names = [s for s in dict.fromkeys(streams) if s not in self._rows]
        for offset in range(0, len(names), MAX_ROWS_PER_STATEMENT):
            part = names[offset:offset + MAX_ROWS_PER_STATEMENT]
            size = next(n for n in SELECT_SIZES if n >= len(part))
            for name in part:
                self._rows[name] = None
            padded = part + [part[-1]] * (size - len(part))  # padding repeats a name: fewer statement shapes
            for row in self._conn.execute(stream_select_sql(size), padded):
                self._rows[row[0]] = tuple(row)

    def stream_row(self, stream: str) -> StreamRow | None:
        """The stream's row as this transaction sees it; a copy the op may change and `save_stream_row`."""
        row = self._rows.get(stream, _MISSING)
        if row is _MISSING:
            row = self._rows[stream] = stream_values(self._conn, stream)
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
        the flush then looks up all such ids of the group at once (client-made ids are random: a page read per
        id, when the id index is larger than the writer's cache), and fails if one is stored
        (FlushFailed.stored_id), after which the writer runs the group again with every lookup made. Scavenged
        ids are always looked up."""
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
        unbuffered = idfilter.sort_out(self._id_filter, unbuffered)[0]
        for chunk in id_index.chunks(unbuffered):
            found.extend(record_from_row(r) for r in self._conn.execute(
                id_index.records_sql(len(chunk), self._id_tables), id_index.bind(chunk, self._id_tables)))
        return found

    def insert(self, stream: str, first_position: int, first_version: int, events: Sequence) -> None:
        """Buffer events (sealed by seal_payloads: payload_crc, their reply text's head, and the row's fixed
        values) as consecutive records."""
        now, epoch = self.now, self.epoch
        self.note_epoch(epoch, first_position)
        # the flush adds them to the filter, and (unless look_up_stored_ids) looks them up in the stored records
        self._given_ids.extend(e.id for e in events if e.given_id)
        # this loop runs once per event on the writer, so it stays lean: what it can, seal_payloads prepared
        values = self._events
        add, ids = values.extend, self._event_ids
        pack, crc = CHECKSUM_PLACE.pack, crc32c.crc32c
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
        for i in range(0, len(rows), ROW_WIDTH):
            position = rows[i + AT_POSITION]
            if position <= self.last_position:
                raise LogError(f"replicated entry at position {position} is not after the head "
                               f"{self.last_position}")
            self.note_epoch(rows[i + AT_EPOCH], position)
            self.last_position = position
            self.last_created = max(self.last_created, rows[i + AT_CREATED])
        for offset, count in row_chunks(len(rows) // ROW_WIDTH):  # multi-row INSERTs, as in `insert`
            conn.execute(insert_sql(count), rows[offset * ROW_WIDTH:(offset + count) * ROW_WIDTH])
        if rows:
            self.window_rows += id_index.index_ids(conn, rows[AT_POSITION], rows[len(rows) - ROW_WIDTH + AT_POSITION])
            if self._id_filter is not None:
                self._id_filter.add(idfilter.keys(bytes(rows[i + AT_ID]) for i in range(0, len(rows), ROW_WIDTH)))

    def truncate_after(self, position: int) -> list[tuple[str, int]]:
        """Delete every record after `position`; the (stream, lowest removed version) of each stream touched."""
        conn = self.conn
        self.rewrote_events = True
        touched = conn.execute("SELECT stream, min(version) FROM events WHERE position > ? GROUP BY stream",
                               (position,)).fetchall()
        if conn.execute("DELETE FROM events WHERE position > ?", (position,)).rowcount:
            self._count_removal()
        conn.execute("DELETE FROM epochs WHERE start > ?", (position,))
        id_index.forget_after(conn, position)
        self.truncated_to = position if self.truncated_to is None else min(self.truncated_to, position)
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
