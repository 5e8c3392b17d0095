"""WAL policy: how connections are opened (journal mode, sync level, cache), the WAL file zero-filled to its
working size, and the checkpoint that keeps the WAL from growing without end under steady load."""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from pathlib import Path

WRITER_CACHE_KIB = 16 * 1024
READER_CACHE_KIB = 4 * 1024
WAL_REWIND_FRAMES = 4096  # past this many WAL pages (16 MiB of 4 KiB pages), catch up and rewind the WAL
WAL_CATCH_UP_ROUNDS = 4  # passive rounds to catch up with the writer before the writer copies the rest
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # what a rewound WAL file is truncated to
WAL_HEADER_BYTES, WAL_FRAME_HEADER_BYTES = 32, 24  # SQLite's WAL format: a file header, then a header per page
ZERO_FILL_CHUNK = 1024 * 1024
_VOLUME_FULL = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger("evstore.storage")


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


def wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def working_size(page_size: int) -> int:
    """The WAL's size when the checkpointer rewinds it under steady load: twice the frames it rewinds after (a
    rewind waits for the frames written meanwhile), within the size a rewound WAL is truncated to."""
    return min(WAL_SIZE_LIMIT, WAL_HEADER_BYTES + 2 * WAL_REWIND_FRAMES * (page_size + WAL_FRAME_HEADER_BYTES))


def zero_fill(conn: sqlite3.Connection, path: Path) -> int:
    """Extend the WAL file of the database at `path` with zeros to its working size, and sync it; the bytes added.

    As PostgreSQL zero-fills each WAL segment before using it: a commit's fdatasync then writes the pages it
    overwrites, and not also the file's new size through the file system's journal (here 0.12 ms against
    0.19-0.23 ms per fdatasync, bench/wal_sync.py). SQLite deletes the file when its last connection closes, so
    without this every start would grow it again until the checkpointer first rewinds it (past 4,096 frames,
    17-32 MB here: the first seconds of steady appends); after a rewind SQLite writes the WAL from its start.
    It never reads past the last frame it committed (zeros end a recovery's scan as stale frames do). Only what
    lies past the file's end is written, and under the WAL's write lock (an empty transaction), so that not even
    a writer in another process can be adding a frame there meanwhile. On a volume too full for it the zeros
    are taken back and the log opens without them (reads and a scavenge, which frees space, still work)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    target = working_size(page_size)
    conn.execute("BEGIN IMMEDIATE")
    try:
        try:
            fd = os.open(wal_path(path), os.O_WRONLY)
        except FileNotFoundError:  # not opened by SQLite yet: nothing to extend
            return 0
        try:
            start = size = os.fstat(fd).st_size
            if size >= target:
                return 0
            zeros = bytes(ZERO_FILL_CHUNK)
            try:
                while size < target:
                    size += os.pwrite(fd, zeros[:target - size], size)
                os.fsync(fd)
            except OSError as exc:
                if exc.errno not in _VOLUME_FULL:
                    raise
                os.ftruncate(fd, start)  # only zeros lie past `start`, and nothing writes there under the lock
                log.warning("the volume has no room to zero-fill the WAL to %d bytes: the log opens without it "
                            "(%s)", target, exc.strerror)
                return 0
            return size - start
        finally:
            os.close(fd)
    finally:
        conn.execute("ROLLBACK")  # it wrote nothing: only the lock was wanted


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
