"""The state machine over storage: positions, stream versions, expected versions, idempotency,
metadata, deletes and retention. Everything is a stream: a stream's metadata lives as `$metadata`
events in `$$<stream>`, a hard delete is a `$tombstone` event there, and a soft delete is metadata
(`truncateBefore` past the last version), as in KurrentDB.
"""
from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from dataclasses import dataclass, field
from typing import AsyncContextManager, Awaitable, Callable, Protocol, Sequence, TypeVar

import orjson

from ..ids import uuid7_bytes
from .errors import (CorruptRecord, DuplicateEventId, InvalidRequest, LogError, NotLeader, SnapshotNotFound,
                     StreamDeleted, StreamNotFound, Unavailable, WrongExpectedVersion)
from .position import WatchedPosition
from .snapshots import (SNAPSHOT_PREFIX, Snapshot, kept_window, newest_at_or_below, same_snapshot,
                        snapshot_stream, snapshots_between, stored_metadata)
from .readahead import MAX_PAGE_BYTES as READ_AHEAD_MAX_PAGE_BYTES, AheadPage, PageBasis, ReadAhead
from .storage import (DATA_BINARY, AllFilter, Page, Record, ScavengedRecord, Storage, StreamRow, WriteTxn,
                      checked_batches, now_micros, page_taker, read_all as read_all_page, removal_count, row_accounts,
                      row_count, row_record, rows_from_store, seal_payloads, stream_name_ranges, stream_page,
                      stream_rows, verify_rows)
from .storage import streams as stored  # typed queries of a stream's state, settings and maintenance

T = TypeVar("T")

ANY, NO_STREAM, STREAM_EXISTS = "any", "no_stream", "stream_exists"
ExpectedVersion = str | int
METADATA_TYPE = "$metadata"
TOMBSTONE_TYPE = "$tombstone"
SCAVENGES_STREAM, SCAVENGE_TYPE = "$scavenges", "$scavenge"  # a cluster's scavenges are entries of the log
# in the metadata a soft delete writes: it, not a truncateBefore past the end alone, makes a stream deleted
SOFT_DELETED = "$softDeleted"
# a snapshot stream's `keep` (the snapshots saved last it keeps), beside the maxCount that spans them (see
# _fit_kept_window); a stream from before it has maxCount alone, equal to its keep
KEEP_KEY = "keep"
COMMITTED_POSITION_WAIT = 2.0  # how long a read waits for a restarted node to learn the committed position (503 after)
TRIM_EVERY = 1.0  # seconds between trims of system streams (see Log.trim_system_streams)
ALL_SCAN_WINDOW = 32768  # positions (or index entries) a filtered $all read examines before it answers with a cursor
LIST_SCAN_BUDGET = 10_000  # stream rows a listing examines before it answers with a cursor
MAX_SNAPSHOT_VERSION = 2**62


def metadata_stream(stream: str) -> str:
    return "$$" + stream


@dataclass(slots=True)
class NewEvent:
    id: bytes
    type: str
    data: bytes
    metadata: bytes
    given_id: bool = True  # False when the node made the id up: it cannot repeat, so no lookup is needed
    flags: int = 0  # content types of data and metadata (storage.DATA_BINARY, storage.METADATA_BINARY)
    id_text: bytes = b""  # the id's canonical text, when the caller has it (else seal_payloads makes it from `id`)
    payload_crc: int = 0  # set by the log before the event goes to the writer (see storage.payload_checksum)
    # set by seal_payloads: the reply text up to the version, and the values of the stored row that do not depend
    # on the event's place (storage.STORED_COLUMNS from the id on)
    head: bytearray | bytes = b""
    fixed: tuple = ()


@dataclass(slots=True)
class AppendResult:
    stream: str
    from_version: int
    version: int
    position: int
    bytes_written: int = field(default=0, compare=False)  # data+metadata stored (0: a retry answered from the log)


@dataclass(slots=True)
class StreamAppend:
    """One entry of an append to several streams."""
    stream: str
    expected: ExpectedVersion
    events: Sequence[NewEvent]


@dataclass(slots=True)
class MultiAppendResult:
    results: list[AppendResult]
    position: int  # of the last event written

    @property
    def bytes_written(self) -> int:
        return sum(r.bytes_written for r in self.results)


@dataclass(slots=True)
class StreamSlice:
    stream: str
    version: int
    records: Page
    next: int | None


@dataclass(slots=True)
class AllSlice:
    records: Page
    next: int | None
    head: int


@dataclass(slots=True)
class StreamInfo:
    stream: str
    version: int
    created: int | None
    updated: int | None
    deleted: str
    metadata: dict


@dataclass(slots=True)
class Visibility:
    """Which events of a stream reads show, from its metadata (retention) and delete state."""
    min_version: int = 1
    created_after: int | None = None
    deleted: str = "no"
    metadata: dict = field(default_factory=dict)


def metadata_as_stored(row: StreamRow) -> dict:
    """A stream's metadata as stored, the soft-delete marker included."""
    return orjson.loads(row.metadata) if row.metadata else {}


def visibility(row: StreamRow, now: int) -> Visibility:
    meta = metadata_as_stored(row)
    truncate_before = meta.get("truncateBefore") or 0
    min_version = max(1, truncate_before)
    if meta.get("maxCount"):
        min_version = max(min_version, row.version - meta["maxCount"] + 1)
    created_after = now - meta["maxAge"] * 1_000_000 if meta.get("maxAge") else None
    if created_after is not None and created_after <= 0:  # older than the Unix epoch: nothing to hide
        created_after = None
    if row.deleted == "hard":
        deleted = "hard"
    elif row.version > 0 and truncate_before > row.version and meta.get(SOFT_DELETED):
        deleted = "soft"
    else:  # a truncateBefore past the end set by the client hides the events, not the stream
        deleted = "no"
    return Visibility(min_version, created_after, deleted, public_metadata(meta))


def public_metadata(meta: dict) -> dict:
    """Stream metadata as clients see it: without the soft-delete marker."""
    if SOFT_DELETED not in meta:
        return meta
    return {key: value for key, value in meta.items() if key != SOFT_DELETED}


def check_expected_version(stream: str, row: StreamRow, expected: ExpectedVersion, deleted: str) -> None:
    exists = row.version > 0 and deleted == "no"
    if expected == ANY:
        ok = True
    elif expected == NO_STREAM:
        ok = not exists
    elif expected == STREAM_EXISTS:
        ok = exists
    else:
        ok = row.version == expected
    if not ok:
        raise WrongExpectedVersion(f"stream {stream!r} is at version {row.version}, expected {expected}",
                                   stream=stream, expectedVersion=expected, currentVersion=row.version)


def _stream_row(conn: sqlite3.Connection, stream: str, visible: int | None = None) -> StreamRow | None:
    """The stream's row; with `visible`, as of that position (a cluster node may hold entries past its
    committed position, which reads must not show)."""
    found = stored.stream_row(conn, stream)
    return found if found is None or visible is None else _row_as_of(conn, found, visible)


def _row_as_of(conn: sqlite3.Connection, row: StreamRow, visible: int) -> StreamRow:
    at = StreamRow(row.stream, row.version, row.created, row.updated, row.deleted, row.metadata)
    last = stored.last_position(conn, row.stream)
    if last is not None and last > visible:
        # walk down from the top past the (few) entries not committed yet
        below = stored.newest_through(conn, row.stream, visible)
        if below is not None:
            at.version, at.updated = below
        else:
            at.version = stored.lowest_version_after(conn, row.stream, visible) - 1
    meta_stream = metadata_stream(row.stream)
    meta_last = stored.last_position(conn, meta_stream)
    if meta_last is not None and meta_last > visible:
        meta = stored.newest_of_type(conn, meta_stream, METADATA_TYPE, through=visible)
        at.metadata = meta[2] if meta else None
        tomb = stored.has_event_of_type(conn, meta_stream, TOMBSTONE_TYPE, through=visible)
        at.deleted = "hard" if tomb else "no"
    return at


class WriteGate(Protocol):
    """What a clustered node adds around every write: `writing()` admits it (or raises NotLeader /
    Unavailable before anything is written) and counts it in flight; `committed` holds the reply until the
    write is committed on the in-sync replicas (or raises Unavailable: outcome unknown)."""

    def writing(self) -> AsyncContextManager[None]: ...

    def committed(self, position: int) -> Awaitable[None]: ...


REPLICA_BATCH_BYTES = 1 << 20


class Log:
    """The log of one node. `visible` is the last position reads may show (committed entries only), `written`
    the durable local head; both can be awaited. A single node shows what it wrote; a clustered node shows what
    its role (leader or follower) reports committed, through the same `visible` object."""

    def __init__(self, storage: Storage, metrics=None, *, clustered: bool = False) -> None:
        self.storage = storage
        self.metrics = metrics
        self.clustered = clustered
        self._gate: WriteGate | None = None  # a clustered node's role decides (see use_write_gate)
        self.written = WatchedPosition(storage.head, monotonic=False)
        self.visible = WatchedPosition(storage.committed if clustered else storage.head)
        # a clustered node persists its commit point only now and then: after a restart it may have shown more
        # than it persisted, so it shows nothing until its role has learned the commit point again
        self._committed_position_known = asyncio.Event()
        if not clustered:
            self._committed_position_known.set()
        self.read_ahead: ReadAhead = ReadAhead()
        self._request_reads = 0  # reads under way for requests (pages read ahead are not among them)

    async def open(self) -> None:
        """Open the storage; what was committed before a restart is visible at once."""
        await asyncio.to_thread(self.storage.open)
        self.written.reset(self.storage.head)
        self.visible.advance(self.storage.committed if self.clustered else self.storage.head)

    async def close(self) -> None:
        self.read_ahead.clear()
        await asyncio.to_thread(self.storage.close)

    def use_write_gate(self, gate: WriteGate) -> None:
        """What a clustered node's current role puts around every write (see WriteGate)."""
        self._gate = gate

    # what the cluster and the API know of the log on disk: through these, never through `storage`
    @property
    def head(self) -> int:
        """The last durable position of this node's copy (committed or not)."""
        return self.storage.head

    @property
    def persisted_committed(self) -> int:
        """The committed position as last persisted here (see persist_committed)."""
        return self.storage.committed

    @property
    def epoch(self) -> int:
        """The epoch this node writes new entries with (its leader epoch)."""
        return self.storage.epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.storage.epoch = epoch

    @property
    def promised_epoch(self) -> int:
        """The newest leader epoch this node has followed or led (persisted)."""
        return self.storage.promised_epoch

    @property
    def writes_in_flight(self) -> int:
        """Writes queued or under way and not yet durable."""
        return self.storage.writes_in_flight

    def epoch_at(self, position: int) -> int:
        return self.storage.epoch_at(position)

    def end_of_epoch(self, epoch: int) -> tuple[int, int]:
        return self.storage.end_of_epoch(epoch)

    def size_by_file(self) -> dict[str, int]:
        return self.storage.size_by_file()

    @property
    def path(self) -> Path:
        """The log's database file."""
        return self.storage.path

    def committed_position_known(self) -> None:
        """The role (leader or follower) has learned the cluster's committed position since this node started."""
        self._committed_position_known.set()

    async def _horizon(self) -> int | None:
        """What reads may show: None on a single node (everything durable), else the visible position, once
        known (bounded wait, then 503)."""
        if not self.clustered:
            return None
        if not self._committed_position_known.is_set():
            try:
                async with asyncio.timeout(COMMITTED_POSITION_WAIT):
                    await self._committed_position_known.wait()
            except asyncio.TimeoutError:
                raise Unavailable("this node has not yet learned the cluster's commit point since it started; "
                                  "retry, or read from another node", reason="commit_point_unknown") from None
        return self.visible.position

    def _wrote(self) -> None:
        self.written.reset(self.storage.head)
        if not self.clustered:
            self.visible.advance(self.storage.head)

    async def _write(self, op: Callable[[WriteTxn], object], weight: int = 1, position_of=None,
                     streams: tuple[str, ...] = ()):
        gate = self._gate
        if gate is None:
            if self.clustered:
                raise NotLeader()  # no role yet: nothing is written here
            result = await self.storage.write(op, weight, streams)
            self._wrote()
            return result
        async with gate.writing():
            try:
                result = await self.storage.write(op, weight, streams)
            except LogError as exc:
                if exc.status < 500 and exc.observed_position:
                    # a refusal (409, 404, 410) may rest on entries not committed yet: answer it only once they
                    # are, and only while still leading; otherwise the outcome is a 503
                    await gate.committed(exc.observed_position)
                raise
            self._wrote()
            await gate.committed(position_of(result) if position_of else self.storage.head)
        return result

    # writes ----------------------------------------------------------------------------------
    async def append(self, stream: str, expected: ExpectedVersion, events: Sequence[NewEvent]) -> AppendResult:
        if not events:
            raise InvalidRequest("an append needs at least one event", field="events")
        size = seal_payloads(stream, events)

        def op(txn: WriteTxn) -> AppendResult:
            row = txn.stream_row(stream) or StreamRow(stream)

            def check() -> None:
                vis = visibility(row, txn.now)
                if vis.deleted == "hard":
                    raise StreamDeleted(f"stream {stream!r} was hard deleted", stream=stream)
                check_expected_version(stream, row, expected, vis.deleted)

            existing = _stored_retry(txn, [e.id for e in events if e.given_id], check)
            if existing:
                return _original_reply(stream, events, existing)
            result = _write_events(txn, row, events)
            result.bytes_written = size
            return result

        # weight: events, plus one per KiB, so that one group commit (which replication ships whole) stays
        # within tens of MB even when its appends are large
        return await self._write(op, len(events) + size // 1024, position_of=lambda r: r.position,
                                 streams=(stream,))

    async def append_many(self, appends: Sequence[StreamAppend]) -> MultiAppendResult:
        """Append to several streams in one write operation: all or nothing, at contiguous positions, the entries
        in order (a stream named twice gets its entries one after the other; each expected version is checked
        against the stream as the entries before it leave it). Every failing check is named (WrongExpectedVersion
        with `failures`); a retry of the whole request (the same event ids and content) gets the original reply."""
        if not appends:
            raise InvalidRequest("an append to several streams needs at least one entry", field="appends")
        for i, entry in enumerate(appends):
            if not entry.events:
                raise InvalidRequest("an append needs at least one event", field=f"appends[{i}].events")
        sizes = [seal_payloads(entry.stream, entry.events) for entry in appends]
        streams = tuple(dict.fromkeys(entry.stream for entry in appends))

        def op(txn: WriteTxn) -> MultiAppendResult:
            existing = _stored_retry(txn, [e.id for entry in appends for e in entry.events if e.given_id],
                                     lambda: _check_entries(txn, appends))
            if existing:
                return _original_multi_reply(appends, existing)
            results = []
            for entry, size in zip(appends, sizes):
                result = _write_events(txn, txn.stream_row(entry.stream) or StreamRow(entry.stream), entry.events)
                result.bytes_written = size
                results.append(result)
            return MultiAppendResult(results, results[-1].position)

        count = sum(len(entry.events) for entry in appends)
        return await self._write(op, count + sum(sizes) // 1024, position_of=lambda r: r.position,
                                 streams=streams)

    async def set_metadata(self, stream: str, metadata: dict) -> dict:
        """Replace a stream's metadata. A soft delete's floor stays: the events it hid stay hidden (and a stream
        still deleted stays deleted) whatever truncateBefore the new metadata gives. A stream appended to since its
        soft delete is no longer deleted: a truncateBefore past its end then hides its events, not the stream."""
        def op(txn: WriteTxn) -> dict:
            row = txn.stream_row(stream) or StreamRow(stream)
            if row.deleted == "hard":
                raise StreamDeleted(f"stream {stream!r} was hard deleted", stream=stream)
            stored = dict(metadata)
            before = metadata_as_stored(row)
            if before.get(SOFT_DELETED):
                floor = before.get("truncateBefore") or 0
                stored["truncateBefore"] = max(stored.get("truncateBefore") or 0, floor)
                if row.version < floor:  # still deleted; once appended to again, the delete is over
                    stored[SOFT_DELETED] = True
            _write_system_event(txn, metadata_stream(stream), METADATA_TYPE, orjson.dumps(stored))
            return public_metadata(stored)

        return await self._write(op)

    async def delete(self, stream: str, expected: ExpectedVersion, hard: bool) -> None:
        def op(txn: WriteTxn) -> None:
            row = txn.stream_row(stream) or StreamRow(stream)
            vis = visibility(row, txn.now)
            if vis.deleted == "hard":
                raise StreamDeleted(f"stream {stream!r} was hard deleted", stream=stream)
            if not hard and (row.version == 0 or vis.deleted == "soft"):
                raise StreamNotFound(f"stream {stream!r} does not exist", stream=stream)
            check_expected_version(stream, row, expected, vis.deleted)
            if hard:
                _write_system_event(txn, metadata_stream(stream), TOMBSTONE_TYPE,
                                    orjson.dumps({"version": row.version}))
            else:
                meta = dict(vis.metadata, truncateBefore=row.version + 1, **{SOFT_DELETED: True})
                _write_system_event(txn, metadata_stream(stream), METADATA_TYPE, orjson.dumps(meta))

        await self._write(op)

    # snapshots (see node/snapshots.py) ------------------------------------------------------
    async def save_snapshot(self, source: str, version: int, snapshot: NewEvent, *, keep: int | None = None
                            ) -> Snapshot:
        """Store a snapshot of `source` at `version` (one at that version already is replaced; an identical one
        is left as it is). `keep`: from now on keep only the latest `keep` snapshots saved of this source."""
        stream = snapshot_stream(source)
        event = NewEvent(uuid7_bytes()[0], snapshot.type, snapshot.data,
                         stored_metadata(version, snapshot.metadata, snapshot.flags), given_id=False,
                         flags=snapshot.flags & DATA_BINARY)
        seal_payloads(stream, [event])

        def op(txn: WriteTxn) -> Snapshot:
            row = txn.stream_row(stream) or StreamRow(stream)
            vis = visibility(row, txn.now)
            meta = metadata_as_stored(row)
            kept = meta.get(KEEP_KEY, meta.get("maxCount")) if meta.get("maxCount") else None
            retention_changes = keep is not None and kept != keep
            if keep is not None or kept:
                txn.conn  # noqa: B018 - the op's SQL starts before its writes, so _fit_kept_window may query after them
            if row.version > 0 and vis.deleted == "no" and not retention_changes:
                found = newest_at_or_below(txn.conn, stream, min_event_version=vis.min_version, max_version=version,
                                           visible=None)
                if found is not None and found.version == version and same_snapshot(
                        found, snapshot.type, snapshot.data, snapshot.metadata, snapshot.flags):
                    return found
            if retention_changes:
                retention = {**meta, "maxCount": keep, KEEP_KEY: keep}
                if row.version > 0:  # what an earlier, lower keep hides stays hidden (keep only ever drops)
                    retention["truncateBefore"] = max(meta.get("truncateBefore") or 0, vis.min_version)
                _write_system_event(txn, metadata_stream(stream), METADATA_TYPE, orjson.dumps(retention))
            result = _write_events(txn, row, [event])
            if keep is not None or kept:
                # only what was visible before the save counts: an event an earlier maxCount hid may be trimmed
                # already on one node and not yet on another
                _fit_kept_window(txn, stream, keep if keep is not None else kept,
                                 floor=vis.min_version if row.version > 0 else 1)
            return Snapshot(source, version, snapshot.type, snapshot.data, snapshot.metadata, snapshot.flags,
                            txn.now, result.position)

        return await self._write(op, 1 + len(snapshot.data) // 1024, position_of=lambda s: s.position,
                                 streams=(stream,))

    async def delete_snapshots(self, source: str) -> None:
        """Hide every snapshot of `source` (a soft delete of its stream; a scavenge reclaims the space). Saving
        one again later starts afresh."""
        stream = snapshot_stream(source)

        def op(txn: WriteTxn) -> None:
            row = txn.stream_row(stream)
            if row is None or row.version == 0:
                return
            vis = visibility(row, txn.now)
            if vis.deleted != "no":
                return
            # a later save starts afresh: its retention too
            meta = {key: value for key, value in vis.metadata.items() if key not in ("maxCount", KEEP_KEY)}
            meta.update(truncateBefore=row.version + 1, **{SOFT_DELETED: True})
            _write_system_event(txn, metadata_stream(stream), METADATA_TYPE, orjson.dumps(meta))

        await self._write(op, streams=(stream,))

    async def read_snapshot(self, source: str, max_version: int | None = None) -> Snapshot:
        """The snapshot of `source` with the highest version at or below `max_version` (None: the latest)."""
        visible = await self._horizon()
        stream = snapshot_stream(source)

        def read(conn: sqlite3.Connection) -> Snapshot:
            vis = _snapshot_visibility(conn, stream, visible)
            found = None if vis is None else newest_at_or_below(
                conn, stream, min_event_version=vis.min_version,
                max_version=MAX_SNAPSHOT_VERSION if max_version is None else max_version, visible=visible)
            if found is None:
                below = "" if max_version is None else f" at or below version {max_version}"
                raise SnapshotNotFound(f"source {source!r} has no snapshot{below}", source=source)
            return found

        return await self.storage.read(read)

    async def read_snapshots(self, source: str, *, min_version: int = 0, max_version: int | None = None,
                             backward: bool = False, limit: int) -> tuple[list[Snapshot], int | None]:
        """Every snapshot of `source` with a version from `min_version` to `max_version`, in version order
        (`backward`: highest first), at most `limit`; and where the next page starts (its min_version forward,
        its max_version backward), None after the last."""
        visible = await self._horizon()
        stream = snapshot_stream(source)
        top = MAX_SNAPSHOT_VERSION if max_version is None else max_version

        def read(conn: sqlite3.Connection) -> tuple[list[Snapshot], int | None]:
            vis = _snapshot_visibility(conn, stream, visible)
            if vis is None:
                return [], None
            found = snapshots_between(conn, stream, min_event_version=vis.min_version, min_version=min_version,
                                      max_version=top, backward=backward, limit=limit + 1, visible=visible)
            if len(found) <= limit:
                return found, None
            return found[:limit], found[limit].version

        return await self.storage.read(read)

    async def list_snapshots(self, prefix: str | None, after: str | None, limit: int
                             ) -> tuple[list[Snapshot], str | None]:
        """The latest snapshot of each source (in name order) with a name starting with `prefix`, after the
        source `after`; and the source to list after next, None after the last."""
        rows, nxt = await self.list_streams(SNAPSHOT_PREFIX + (prefix or ""),
                                            None if after is None else SNAPSHOT_PREFIX + after, limit)
        visible = await self._horizon()

        def read(conn: sqlite3.Connection) -> list[Snapshot]:
            latest = []
            for row in rows:
                vis = visibility(row, now_micros())
                found = newest_at_or_below(conn, row.stream, min_event_version=vis.min_version,
                                           max_version=MAX_SNAPSHOT_VERSION, visible=visible)
                if found is not None:
                    latest.append(found)
            return latest

        return await self.storage.read(read), None if nxt is None else nxt[len(SNAPSHOT_PREFIX):]

    async def scavenge(self) -> dict:
        """Remove the events that retention (maxCount, maxAge, truncateBefore, deletes) already hides.

        On a cluster the scavenge is itself a log entry (a `$scavenge` event in `$scavenges`): every node
        applies it once the entry is visible, with the stream state as of the entry's position and the
        entry's time, so every copy removes the same events (see apply_scavenges)."""
        if not self.clustered:
            return await self.storage.write(lambda txn: {"removed": _scavenge_as_of(txn, None, txn.now)})

        def op(txn: WriteTxn) -> int:
            _write_system_event(txn, SCAVENGES_STREAM, SCAVENGE_TYPE, b"{}")
            return txn.last_position

        position = await self._write(op, position_of=lambda p: p)
        await self.visible.wait_for(position)
        removed = await self.apply_scavenges()
        return {"removed": removed, "position": position}

    async def apply_scavenges(self) -> int:
        """Apply the visible `$scavenge` entries this node has not applied yet (in order, each once: the last
        one applied is kept in the settings, in the same transaction as its removals). Events removed."""
        if not self.clustered:
            return 0  # a single node scavenges at once and writes no entries
        visible = self.visible.position

        def op(txn: WriteTxn) -> int:
            done = stored.setting(txn.conn, "scavenged_through")
            pending = stored.events_of_type(txn.conn, SCAVENGES_STREAM, SCAVENGE_TYPE,
                                            after=int(done) if done else 0, through=visible)
            removed = sum(_scavenge_as_of(txn, position, created) for position, created in pending)
            if pending:
                txn.set_setting("scavenged_through", str(pending[-1][0]))
            return removed

        return await self.storage.write(op)

    async def trim_system_streams(self) -> int:
        """Remove the events of `$`-streams (subscription checkpoints, parked events, snapshots) that their
        `maxCount` hides, as of the visible position. Committed state is the same on every node, so every copy of
        the log is trimmed alike, and a truncation never needs back what was removed. Unlike `scavenge` it runs on
        clusters too. The number of events removed."""
        visible = await self._horizon()

        def due(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            """(stream, first version to keep) of each system stream with events its maxCount hides."""
            found = []
            for row in stored.system_rows_with_metadata(conn):
                at = row if visible is None else _row_as_of(conn, row, visible)
                keep = orjson.loads(at.metadata).get("maxCount") if at.metadata else None
                if keep and at.version > keep and stored.has_version_at_or_below(conn, row.stream, at.version - keep):
                    found.append((row.stream, at.version - keep + 1))
            return found

        # most passes find nothing: decide with a read, so an idle trim is no transaction of the writer's
        if not await self.storage.read(due):
            return 0

        def op(txn: WriteTxn) -> int:
            return sum(txn.delete_events(stream, below, None) for stream, below in due(txn.conn))

        return await self.storage.write(op)

    async def keep_system_streams_trimmed(self, *, every: float = TRIM_EVERY) -> None:
        """Trim system streams (see trim_system_streams) whenever the visible position moved, at most once per
        `every` seconds; runs until cancelled."""
        trimmed_at = -1
        while True:
            await self.visible.wait_for(trimmed_at + 1)
            trimmed_at = self.visible.position
            try:
                await self.trim_system_streams()
                await self.apply_scavenges()  # scavenges the leader wrote, once they are visible here
            except Unavailable:  # shutting down, or a storage error (logged by the writer): try again later
                pass
            await asyncio.sleep(every)  # pacing between trims, not a synchronisation

    # reads -----------------------------------------------------------------------------------
    async def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        self._request_reads += 1
        try:
            return await self.storage.read(read)
        except CorruptRecord:
            self._found_corrupt("read")
            raise
        finally:
            self._request_reads -= 1

    def _judged(self, verdict: list[bool]) -> None:
        """Count whether a page taken from the read-ahead still held (in the loop thread, once the read is done)."""
        for held in verdict:
            self.read_ahead.judged(held)
            if self.metrics is not None:
                self.metrics.read_ahead_judged(held)

    def _found_corrupt(self, path: str, count: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.checksum_failed(path, count)

    async def read_stream(self, stream: str, *, start: int | None = None, limit: int, backward: bool = False,
                          rendered: bool = False) -> StreamSlice:
        """`rendered`: the slice holds the events as the reply's JSON (storage.RenderedEvent rows), not records.
        Forward pages of rendered reads are read ahead (node/readahead.py)."""
        visible = await self._horizon()
        take = page_taker(rendered=rendered)
        ahead_key = ("stream", stream, limit) if rendered and not backward else None
        ahead = await self.read_ahead.take((*ahead_key, start)) if ahead_key else None
        verdict: list[bool] = []  # whether the page read ahead still held (judged in the reader thread)

        def read(conn: sqlite3.Connection, start: int | None, ahead: AheadPage | None) -> AheadPage[StreamSlice]:
            row = _readable_row(conn, stream, visible)
            version = row.version
            vis = visibility(row, now_micros())
            state = (row.metadata, row.deleted, vis.min_version, vis.deleted)  # what else decides the page
            if ahead is not None:
                # a time cut-off (maxAge) moves with the clock: no page of such a stream is taken from there
                held = vis.created_after is None and ahead.basis.still_holds(
                    PageBasis(removal_count(conn), version, False, state))
                verdict.append(held)
                if held:
                    return AheadPage(StreamSlice(stream, version, ahead.page.records, ahead.page.next),
                                     ahead.basis, ahead.size)
            if backward:
                low, high = vis.min_version, version if start is None else min(start, version)
            else:
                low, high = max(start or 1, vis.min_version), None
            # a page also stops at a byte budget
            records, stopped = stream_page(conn, stream, low=low, high=high, backward=backward, limit=limit,
                                           created_after=vis.created_after, through=visible, take=take)
            nxt = None
            if stopped:
                last = take.version(records[-1])
                if backward and last - 1 >= vis.min_version:
                    nxt = last - 1
                elif not backward and last < version:
                    nxt = last + 1
            if not ahead_key or vis.created_after is not None:
                return AheadPage(StreamSlice(stream, version, records, nxt), None, 0)
            # a forward page with a `next` stopped below the stream's version: it ends there at any later version
            return AheadPage(StreamSlice(stream, version, records, nxt),
                             PageBasis(removal_count(conn), version, nxt is not None, state),
                             take.total_size(records))

        result = await self._read(lambda conn: read(conn, start, ahead))
        self._judged(verdict)
        if result.basis is not None and result.page.next is not None:
            after = result.page.next
            self._read_further(result, (*ahead_key, after), lambda conn: read(conn, after, None))
        return result.page

    async def read_all(self, *, start: int | None = None, limit: int, backward: bool = False,
                       filters: AllFilter | None = None, rendered: bool = False) -> AllSlice:
        """`rendered`: the slice holds the events as the reply's JSON (storage.RenderedEvent rows), not records.
        Forward pages of rendered reads are read ahead (node/readahead.py)."""
        filters = AllFilter() if filters is None else filters
        visible = await self._horizon()
        window = ALL_SCAN_WINDOW
        take = page_taker(rendered=rendered)
        # a typePrefix read's plan depends on the types the whole log holds (storage.reads._plan), not only on what is
        # at or below the head: such a read is not read ahead
        ahead_key = ("all", limit, *filters.key()) if rendered and not backward and not filters.type_prefix else None
        ahead = await self.read_ahead.take((*ahead_key, start)) if ahead_key else None
        verdict: list[bool] = []

        def read(conn: sqlite3.Connection, start: int | None, ahead: AheadPage | None) -> AheadPage[AllSlice]:
            head = stored.head_position(conn)
            head = head if visible is None else min(head, visible)
            if ahead is not None:
                held = ahead.basis.still_holds(PageBasis(removal_count(conn), head, False))
                verdict.append(held)
                if held:  # the same events and `next`; the head is today's
                    return AheadPage(AllSlice(ahead.page.records, ahead.page.next, head), ahead.basis, ahead.size)
            records, nxt = read_all_page(conn, start=start, limit=limit, backward=backward, filters=filters,
                                         head=head, window=window, take=take)
            if not ahead_key:
                return AheadPage(AllSlice(records, nxt, head), None, 0)
            # a page that stopped at its limit or byte budget below the head ends where it ends at any later head
            full = bool(records) and nxt == take.position(records[-1]) + 1
            return AheadPage(AllSlice(records, nxt, head), PageBasis(removal_count(conn), head, full),
                             take.total_size(records))

        result = await self._read(lambda conn: read(conn, start, ahead))
        self._judged(verdict)
        if ahead_key and result.page.next is not None:
            after = result.page.next
            self._read_further(result, (*ahead_key, after), lambda conn: read(conn, after, None))
        return result.page

    def _read_further(self, result: AheadPage, key: tuple, read: Callable[[sqlite3.Connection], AheadPage]) -> None:
        """Read the page after `result` ahead, when it is likely to be asked for and cheap to keep: the page was
        no larger than the read-ahead keeps, and no request's read is under way (other pages read ahead may be)."""
        if result.size > READ_AHEAD_MAX_PAGE_BYTES or self._request_reads:
            return
        # through the storage, not self._read: a corrupt record found ahead is found again, and counted, by the
        # request that reads it afresh
        self.read_ahead.start(key, lambda: self.storage.read(read))

    async def stream_info(self, stream: str) -> StreamInfo:
        visible = await self._horizon()

        def read(conn: sqlite3.Connection) -> StreamInfo:
            row = _stream_row(conn, stream, visible)
            if row is None or (row.version == 0 and row.deleted != "hard"):
                raise StreamNotFound(f"stream {stream!r} does not exist", stream=stream)
            vis = visibility(row, now_micros())
            return StreamInfo(stream, row.version, row.created, row.updated, vis.deleted, vis.metadata)

        return await self._read(read)

    async def refuse_hard_deleted(self, stream: str) -> None:
        """StreamDeleted for a hard-deleted stream (one that does not exist yet, or soft-deleted, passes): what
        subscribers of it are told, whatever `$all` still shows until a scavenge."""
        try:
            info = await self.stream_info(stream)
        except StreamNotFound:
            return
        if info.deleted == "hard":
            raise StreamDeleted(f"stream {stream!r} was hard deleted", stream=stream)

    async def get_metadata(self, stream: str) -> dict:
        visible = await self._horizon()

        def read(conn: sqlite3.Connection) -> dict:
            row = _stream_row(conn, stream, visible)
            if row is not None and row.deleted == "hard":
                raise StreamDeleted(f"stream {stream!r} was hard deleted", stream=stream)
            return public_metadata(metadata_as_stored(row)) if row is not None else {}

        return await self._read(read)

    async def list_streams(self, prefix: str | None, after: str | None, limit: int
                           ) -> tuple[list[StreamRow], str | None]:
        visible = await self._horizon()

        def read(conn: sqlite3.Connection) -> tuple[list[StreamRow], str | None]:
            now = now_micros()
            found: list[StreamRow] = []
            budget, last_seen = LIST_SCAN_BUDGET, None
            for low, high in stream_name_ranges(prefix):
                cursor, inclusive = (after, False) if after is not None and after >= low else (low, True)
                while len(found) <= limit and budget > 0 and (high is None or cursor < high):
                    rows = stream_rows(conn, cursor, inclusive=inclusive, below=high, limit=limit + 1,
                                       hide_deleted=visible is None)
                    if not rows:
                        break
                    budget -= len(rows)
                    for r in rows:
                        row = StreamRow(*r) if visible is None else _row_as_of(conn, StreamRow(*r), visible)
                        if row.version > 0 and visibility(row, now).deleted == "no":
                            found.append(row)
                    cursor = last_seen = rows[-1][0]
                    inclusive = False
                    if len(rows) <= limit:
                        break
            page = found[:limit]
            if len(found) > limit:
                return page, page[-1].stream
            return page, (last_seen if budget <= 0 else None)  # out of budget: go on after the last name seen

        return await self._read(read)

    # replication -----------------------------------------------------------------------------
    def keep_recent_commits(self, on: bool) -> None:
        """Keep the latest group commits in memory to ship them (while leading), or stop."""
        self.storage.recent.keep(on)

    async def rows_from(self, first: int, max_bytes: int = REPLICA_BATCH_BYTES) -> list:
        """The stored rows (flat values, storage.STORED_COLUMNS per record) from position `first` on, about
        `max_bytes` of them, ending at a group-commit boundary (whole commits only, so an append is never
        half-shipped). From the writer's recent commits when they hold `first` (a caught-up follower's next
        fetch), else from the store."""
        recent = self.storage.recent.rows_from(first, max_bytes)
        if recent is not None:
            return recent
        return await self.storage.read(rows_from_store, first, max_bytes)

    async def apply_replicated_rows(self, rows: Sequence, committed: int = 0) -> int:
        """Store rows shipped by the leader, as they are, in one transaction; the new head once durable.
        `committed` (the leader's committed position) is kept with them."""
        try:
            verify_rows(rows)
        except CorruptRecord:
            self._found_corrupt("replication")
            raise
        count = row_count(rows)

        def op(txn: WriteTxn) -> int:
            txn.insert_rows(rows)
            if committed > self.storage.committed:
                txn.set_setting("committed", str(min(committed, txn.last_position)))
            accounts = row_accounts(rows)
            for k, (stream, version, created, event_type) in enumerate(accounts):
                # a run of one stream's records changes its row as its last record does (system effects aside)
                if k + 1 == count or accounts[k + 1][0] != stream or stream.startswith("$$"):
                    data = row_record(rows, k).data if stream.startswith("$$") else b""
                    _account(txn, stream, version=version, created=created, event_type=event_type, data=data)
            return txn.last_position

        head = await self.storage.write(op, weight=count)
        self.storage.committed = max(self.storage.committed, min(committed, head))
        self.written.reset(head)
        return head

    async def persist_committed(self, position: int) -> None:
        """Remember the committed position across restarts: entries up to it are never truncated."""
        await self._raise_setting("committed", position)

    async def truncate_after(self, position: int) -> int:
        """Drop the entries after `position` (a follower's uncommitted tail that the new leader does not
        have) and rebuild the stream rows they touched."""
        if position < self.storage.committed:
            raise Unavailable(f"refusing to truncate to {position}: entries up to {self.storage.committed} "
                              "are committed", reason="truncate_below_committed")

        def op(txn: WriteTxn) -> int:
            for stream, lowest_removed in txn.truncate_after(position):
                _rebuild_row(txn, stream, lowest_removed - 1)
            return txn.last_position

        head = await self.storage.write(op)
        self.written.reset(head)
        return head

    async def promise_epoch(self, epoch: int) -> None:
        """Persist that this node follows or leads `epoch` from now on; it then rejects older epochs."""
        await self._raise_setting("promised_epoch", epoch)

    async def _raise_setting(self, name: str, value: int) -> None:
        """Persist a setting that only grows; the storage attribute of the same name mirrors it."""
        if value <= getattr(self.storage, name):
            return

        def op(txn: WriteTxn) -> None:
            txn.set_setting(name, str(value))

        await self.storage.write(op)
        setattr(self.storage, name, max(getattr(self.storage, name), value))

    async def verify(self, progress: Callable[[int, int], None] | None = None) -> dict:
        result = await self.storage.read(verify_connection, progress)
        if result["corrupt"]:
            self._found_corrupt("verify", len(result["corrupt"]))
        return result


def _readable_row(conn: sqlite3.Connection, stream: str, visible: int | None = None) -> StreamRow:
    row = _stream_row(conn, stream, visible)
    if row is None or row.version == 0:
        if row is not None and row.deleted == "hard":
            raise StreamDeleted(f"stream {stream!r} was hard deleted", stream=stream)
        raise StreamNotFound(f"stream {stream!r} does not exist", stream=stream)
    deleted = visibility(row, now_micros()).deleted
    if deleted == "hard":
        raise StreamDeleted(f"stream {stream!r} was hard deleted", stream=stream)
    if deleted == "soft":
        raise StreamNotFound(f"stream {stream!r} was deleted", stream=stream)
    return row


def _snapshot_visibility(conn: sqlite3.Connection, stream: str, visible: int | None) -> Visibility | None:
    """Which events of a snapshot stream reads show; None when it has none (never saved, or deleted)."""
    row = _stream_row(conn, stream, visible)
    if row is None or row.version == 0:
        return None
    vis = visibility(row, now_micros())
    return vis if vis.deleted == "no" else None


def _write_events(txn: WriteTxn, row: StreamRow, events: Sequence[NewEvent]) -> AppendResult:
    first_position = txn.allocate_positions(len(events))
    first_version = row.version + 1
    txn.insert(row.stream, first_position, first_version, events)
    version = row.version + len(events)
    _account(txn, row.stream, version=version, created=txn.now, event_type=events[-1].type,
             data=events[-1].data)
    return AppendResult(row.stream, first_version, version, first_position + len(events) - 1)


def _stored_retry(txn: WriteTxn, given: list[bytes], check: Callable[[], None]
                  ) -> list[Record | ScavengedRecord] | None:
    """The stored records of the client-made ids `given` when the write is a retry of one written before (it is
    answered as the original was, never refused), else None once `check` (which raises the refusal) passed. The
    ids are first looked up as an insert looks them up (see WriteTxn.records_by_ids), in the whole log only
    before a refusal."""
    existing = txn.records_by_ids(given, before_insert=True) if given else None
    if existing:
        return existing
    try:
        check()
    except LogError:
        if given and (existing := txn.records_by_ids(given)):
            return existing
        raise
    return None


def _account(txn: WriteTxn, stream: str, *, version: int, created: int, event_type: str, data: bytes) -> None:
    """Bring the stream rows up to date with an event just stored: the one code path for the leader's writes,
    a follower's replicated records and the rebuild after a truncation. A `$$` stream's `$metadata` and
    `$tombstone` events also set the metadata and delete state of the stream they describe."""
    row = txn.stream_row(stream) or StreamRow(stream)
    row.version = version
    row.created = row.created or created
    row.updated = created
    txn.save_stream_row(row)
    if stream.startswith("$$") and event_type in (METADATA_TYPE, TOMBSTONE_TYPE):
        target = txn.stream_row(stream[2:]) or StreamRow(stream[2:])
        if event_type == METADATA_TYPE:
            target.metadata = data
        else:
            target.deleted = "hard"
        txn.save_stream_row(target)


def _rebuild_row(txn: WriteTxn, stream: str, version: int) -> None:
    """The row of `stream` after its events above `version` were truncated: as the remaining events left it."""
    row = txn.stream_row(stream) or StreamRow(stream)
    last = stored.newest_created(txn.conn, stream)
    row.version = version
    row.updated = last if last is not None else row.created
    txn.save_stream_row(row)
    if not stream.startswith("$$"):
        return
    target = txn.stream_row(stream[2:])
    if target is None:
        return
    target.metadata, target.deleted = None, "no"
    txn.save_stream_row(target)
    for event_type in (METADATA_TYPE, TOMBSTONE_TYPE):  # the effects of the newest that remain, replayed
        remaining = stored.newest_of_type(txn.conn, stream, event_type)
        if remaining is not None:
            _account(txn, stream, version=version, created=row.updated, event_type=event_type, data=remaining[2])


def _scavenge_as_of(txn: WriteTxn, position: int | None, now: int) -> int:
    """Remove what retention hides as of `position` (None: everything written) and time `now`."""
    removed = 0
    for row in stored.rows_with_retention(txn.conn):
        at = row if position is None else _row_as_of(txn.conn, row, position)
        vis = visibility(at, now)
        below = at.version + 1 if vis.deleted == "hard" else vis.min_version
        removed += txn.delete_events(row.stream, below, vis.created_after, keep_ids=True, through=position)
    return removed


def _write_system_event(txn: WriteTxn, stream: str, event_type: str, data: bytes) -> None:

    row = txn.stream_row(stream) or StreamRow(stream)
    event = NewEvent(uuid7_bytes()[0], event_type, data, b"{}", given_id=False)
    seal_payloads(stream, [event])
    _write_events(txn, row, [event])


def _fit_kept_window(txn: WriteTxn, stream: str, keep: int, *, floor: int) -> None:
    """After a save to a snapshot stream with a `keep`: its maxCount spans the `keep` versions saved last among its
    events from `floor` on, so a snapshot saved again at its version (its earlier event stays in the stream until
    a newer version is saved) does not push another one out."""
    row = txn.stream_row(stream)
    if row is None or row.version <= keep:
        return
    meta = metadata_as_stored(row)
    floor = max(floor, meta.get("truncateBefore") or 0)
    window = kept_window(txn.conn, stream, version=row.version, floor=floor, keep=keep)
    if window != meta.get("maxCount"):
        _write_system_event(txn, metadata_stream(stream), METADATA_TYPE,
                            orjson.dumps({**meta, "maxCount": window, KEEP_KEY: keep}))


def _check_entries(txn: WriteTxn, appends: Sequence[StreamAppend]) -> None:
    """The checks of an append to several streams: no stream hard deleted, and every expected version as the
    entries before it leave its stream (every failing one named, with the version its stream has committed)."""
    failures = []
    ahead: dict[str, int] = {}  # events the entries checked so far add to each stream
    for entry in appends:
        row = txn.stream_row(entry.stream) or StreamRow(entry.stream)
        vis = visibility(row, txn.now)
        if vis.deleted == "hard":
            raise StreamDeleted(f"stream {entry.stream!r} was hard deleted", stream=entry.stream)
        added = ahead.get(entry.stream, 0)
        committed = row.version
        if added:  # as the entries before this one leave the stream: it exists
            row = StreamRow(entry.stream, row.version + added)
        try:
            check_expected_version(entry.stream, row, entry.expected, "no" if added else vis.deleted)
        except WrongExpectedVersion as exc:
            # the version the stream has, committed: what earlier entries of a refused request add never is
            failures.append({**exc.details, "currentVersion": committed} if added else exc.details)
            continue  # a failing entry adds nothing: the entries after it are checked without it
        ahead[entry.stream] = added + len(entry.events)
    if failures:
        first = failures[0]
        raise WrongExpectedVersion(
            f"{len(failures)} of {len(appends)} entries failed their expected-version check; first: "
            f"{first['stream']!r} is at version {first['currentVersion']}, expected {first['expectedVersion']}",
            **first, failures=failures)


def _original_reply(stream: str, events: Sequence[NewEvent], existing: list[Record]) -> AppendResult:
    """A retry of an append that already happened gets the original reply; anything else reusing ids is a 409."""
    by_id = {r.id: r for r in existing}
    records = [by_id.get(e.id) for e in events]
    new = next((e for e, r in zip(events, records) if r is None), None)
    other = next((e for e, r in zip(events, records) if r is not None and not _same_event(r, stream, e)), None)
    if new is None and other is None:
        if all(b.version == a.version + 1 for a, b in zip(records, records[1:])):
            return AppendResult(stream, records[0].version, records[-1].version, records[-1].position)
        raise _duplicate(events[0].id, "was already written with the others of this request, but not as one "
                         "append in this order: a retry must repeat the original append exactly")
    if other is not None:
        raise _duplicate(other.id, "was already used for other content (stream, type, data or metadata)")
    reused = next(e.id for e in events if e.id in by_id)
    raise _duplicate(reused, f"was already written, but event id {uuid.UUID(bytes=new.id)} of this request was "
                     "not: a retry must repeat the original append exactly")


def _duplicate(event_id: bytes, what: str) -> DuplicateEventId:
    return DuplicateEventId(f"event id {uuid.UUID(bytes=event_id)} {what}", eventId=str(uuid.UUID(bytes=event_id)))


def _original_multi_reply(appends: Sequence[StreamAppend], existing: list[Record]) -> MultiAppendResult:
    """A retry of a whole append to several streams gets the original reply: every event id must be known, with
    the same content; some known and some not (a partial overlap) is a 409."""
    known = {r.id for r in existing}
    missing = next((e for entry in appends for e in entry.events if e.id not in known), None)
    if missing is not None:
        raise _duplicate(existing[0].id, f"was already written, but event id {uuid.UUID(bytes=missing.id)} of this "
                         "request was not: a retry must repeat the original request exactly")
    results = [_original_reply(entry.stream, entry.events, existing) for entry in appends]
    return MultiAppendResult(results, max(r.position for r in results))


def _same_event(found: Record | ScavengedRecord, stream: str, event: NewEvent) -> bool:
    if isinstance(found, ScavengedRecord):  # only its payload's checksum is left (over id, stream and content)
        return found.stream == stream and found.payload_crc == event.payload_crc
    return (found.stream == stream and found.type == event.type and found.data == event.data
            and found.metadata == event.metadata and found.flags == event.flags)


def verify_connection(conn: sqlite3.Connection, progress: Callable[[int, int], None] | None = None) -> dict:
    total = stored.event_count(conn)
    checked, corrupt = 0, []
    try:
        for count, found in checked_batches(conn):
            corrupt += found
            checked += count
            if progress is not None:
                progress(checked, total)
    except sqlite3.DatabaseError as exc:
        return {"checked": checked, "corrupt": corrupt, "error": f"database file damaged: {exc}"}
    return {"checked": checked, "corrupt": corrupt}
