"""The storage's threads: one writer doing group commit, reader threads, the syncer (durability `interval`) and
the checkpointer.

The writer drains a queue of pending write operations, runs each inside one transaction (WriteTxn), commits (and
so syncs) once, and only then resolves every waiting future. Readers use their own connections in a thread pool,
so the event loop never blocks on disk."""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NamedTuple

from ..errors import LogError, Unavailable
from .ids import IdWindow
from .recent import RecentCommits
from .schema import DB_FILE, open_schema
from .txn import FlushFailed, WriteTxn
from .wal import WRITER_CACHE_KIB, checkpoint, connect, wal_path, zero_fill

log = logging.getLogger("evstore.storage")

MAX_BATCH_REQUESTS = 2048
MAX_BATCH_WEIGHT = 50_000  # events: a group commit stops taking requests past this
CHECKPOINT_EVERY = 1.0  # seconds between checkpoints, which run off the writer's commit path


def now_micros() -> int:
    return time.time_ns() // 1000


WriteOp = Callable[[WriteTxn], Any]
ReadOp = Callable[..., Any]


class QueuedWrite(NamedTuple):
    """A write() waiting in the writer's queue."""
    op: WriteOp
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    weight: int  # events it writes: bounds how much one group commit takes
    streams: tuple[str, ...]  # whose rows it reads (the writer reads a whole batch's at once)


class Outcome(NamedTuple):
    """What a write op came to, for its future."""
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    result: Any
    error: BaseException | None


class QueuedRead(NamedTuple):
    """A read() waiting for a reader thread: fn(conn, *args)."""
    fn: ReadOp
    args: tuple
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()  # ends a writer or reader thread
LOCK_FILE = "evstore.lock"


class DataDirInUse(OSError):
    """Another process has the data directory's log open."""


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory (its LOCK_FILE, which names the holder's PID) while the log is
    open, as PostgreSQL's postmaster.pid does: two processes writing one log would each take positions the other
    took, and the WAL's zero fill of one could land beside the other's commits. The descriptor: closing it (or
    the process ending, however it ends) releases the lock."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(f"another process (PID {holder}) has the log in {data_dir} open ({path} is locked)"
                           ) from None
    except BaseException:
        os.close(fd)
        raise
    try:  # the PID is for people; the lock is what counts (a full volume may refuse the write)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        log.warning("could not write the PID into %s: %s", path, exc.strerror)
    return fd


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
        self._id_window = IdWindow(self.data_dir)  # the writer's
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
        self._dir_lock: int | None = None  # the descriptor holding lock_data_dir's lock while open

    # lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._dir_lock = lock_data_dir(self.data_dir)
        try:
            conn = self._writer_connection()
        except BaseException:
            self._release_data_dir()
            raise
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

    def _load_state(self, conn: sqlite3.Connection) -> None:
        """What the storage keeps in memory of the log, read on the writer's connection at open."""
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
        self._id_window.attach(conn, head=self.head)

    def _writer_connection(self) -> sqlite3.Connection:
        """The writer's connection to the log, its schema checked (and migrated), its WAL zero-filled, and the
        log's state read from it (_load_state); closed again if any of that fails."""
        conn = connect(self.path, synchronous="FULL" if self.durability == "sync" else "NORMAL",
                       cache_kib=WRITER_CACHE_KIB)
        try:
            open_schema(conn, self.path)
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it, not the commit path
            zero_fill(conn, self.path)  # before any commit: see wal.zero_fill
            self._load_state(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Finish queued writes, checkpoint the WAL into the database file and close every connection."""
        if self._closed:
            return
        self._closed = True
        try:
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
        finally:
            self._release_data_dir()  # after the connections: then another process may open the log

    def _release_data_dir(self) -> None:
        if self._dir_lock is not None:
            os.close(self._dir_lock)
            self._dir_lock = None

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
        self._queue.put(QueuedWrite(op, future, loop, weight, streams))
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
            weight = item.weight
            while len(batch) < MAX_BATCH_REQUESTS and weight < MAX_BATCH_WEIGHT:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                batch.append(more)
                weight += more.weight
            self._run_batch(conn, batch)
            if self._id_window.merge_due(self.head):
                started = time.perf_counter()
                try:
                    self._id_window.merge_slice(conn, self.head)
                except sqlite3.Error:
                    log.exception("merging event ids into their index failed (tried again after the next write)")
                if self.metrics is not None:
                    self.metrics.id_merge_seconds.observe(time.perf_counter() - started)
            if self.metrics is not None:
                self.metrics.id_window_ids.set(self._id_window.rows)
            if self._rewind_wal.is_set():
                self._rewind_wal.clear()
                try:  # between transactions nothing is added while it copies: the checkpoint completes
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.exception("checkpoint by the writer failed")
        self._id_window.save_filter(conn, head=self.head)
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
            outcomes = [Outcome(item.future, item.loop, None, failure) for item in batch]
        else:
            self.epochs = txn.epochs  # before the head: a reader that sees the new head sees its epochs
            if txn.rewrote_events:
                self.recent.clear()
            elif txn.flushed:  # before the head too: a fetch that sees the new head finds it here
                self.recent.add(txn.flushed, txn.last_position)
            self.head = txn.last_position
            self._last_created = max(now, txn.last_created)
            self._scavenged = txn.scavenged
            self._id_window.added(txn.window_rows)
            if txn.truncated_to is not None:
                self._id_window.truncated(txn.truncated_to)
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
                       look_up_stored_ids=look_up_stored_ids, id_filter=self._id_window.filter,
                       id_tables=self._id_window.tables)
        outcomes: list[Outcome] = []
        conn.execute("BEGIN IMMEDIATE")
        txn.prefetch_rows(stream for item in batch for stream in item.streams)
        for op, future, loop, _weight, _streams in batch:
            saved_position, saved_epochs = txn.last_position, txn.epochs
            txn.begin_op()
            try:
                result = op(txn)
                txn.end_op()
                outcomes.append(Outcome(future, loop, result, None))
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
                outcomes.append(Outcome(future, loop, None, exc.with_traceback(None)))
        try:
            txn.flush()
        except FlushFailed as exc:
            exc.outcomes = outcomes
            raise
        return txn, outcomes

    def _sync_loop(self) -> None:
        """Durability `interval`: commits are not synced one by one; the WAL is synced here periodically."""
        wal = wal_path(self.path)
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
            self._read_queue.put(QueuedRead(fn, args, future, loop))
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


def _settle_all(settled: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, result, error in settled:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
