"""The WAL file is zero-filled to its working size when the log opens (evstore.node.storage.wal.zero_fill), so that
a commit's fdatasync overwrites blocks the file has instead of growing it; and a WAL left by a crash keeps every
committed frame. Real SQLite files, real writer threads, a real SIGKILL."""
from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from evstore.ids import uuid7_bytes
from evstore.node.log import Log, NewEvent
from evstore.node.storage import Storage, wal as storage_wal

DATA = orjson.dumps({"padding": "x" * 100})


def single_events(count: int) -> list[list[NewEvent]]:
    return [[NewEvent(event_id, "Padded", DATA, b"{}", given_id=False)] for event_id in uuid7_bytes(count)]


def wal_file(storage: Storage) -> Path:
    return storage_wal.wal_path(storage.path)


async def test_the_wal_is_zero_filled_to_its_working_size_and_commits_overwrite_it(tmp_path):
    storage = Storage(tmp_path / "data")
    storage.open()
    log = Log(storage)
    try:
        working = storage_wal.working_size(4096)
        assert os.path.getsize(wal_file(storage)) == working
        for n, events in enumerate(single_events(300)):
            await log.append(f"s{n % 7}", "any", events)
        assert storage.head == 300
        assert os.path.getsize(wal_file(storage)) == working  # 300 commits wrote into the zeros, none grew it
        with open(wal_file(storage), "rb") as wal:
            wal.seek(working - storage_wal.ZERO_FILL_CHUNK)
            assert wal.read() == bytes(storage_wal.ZERO_FILL_CHUNK)
    finally:
        storage.close()
    assert not wal_file(storage).exists()  # the close checkpoints it all; SQLite deletes the file
    reopened = Storage(tmp_path / "data")
    reopened.open()
    try:
        assert reopened.head == 300
        assert os.path.getsize(wal_file(reopened)) == working
    finally:
        reopened.close()


def test_the_zero_fill_waits_for_the_wal_write_lock(tmp_path):
    """A writer in another process appends frames at the file's end: the zero fill takes the write lock first,
    so it never writes where such a frame is going (here the lock is held, and a filler that may not wait
    refuses)."""
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    filler = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO t VALUES (1)")
        size = os.path.getsize(storage_wal.wal_path(path))
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            storage_wal.zero_fill(filler, path)
        assert os.path.getsize(storage_wal.wal_path(path)) == size
        holder.execute("COMMIT")
        committed = os.path.getsize(storage_wal.wal_path(path))
        assert storage_wal.zero_fill(filler, path) == storage_wal.working_size(4096) - committed
        assert filler.execute("SELECT x FROM t").fetchall() == [(1,)]
        holder.execute("INSERT INTO t VALUES (2)")  # written over the zeros
        assert filler.execute("SELECT x FROM t").fetchall() == [(1,), (2,)]
    finally:
        filler.close()
        holder.close()


async def test_a_volume_too_full_for_the_zero_fill_still_opens_the_log(tmp_path, monkeypatch, caplog):
    """ENOSPC while zero-filling: the zeros are taken back and the log opens without them, so that a node on a
    full volume still serves reads and a scavenge (which frees space) instead of failing to start."""
    def volume_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    storage = Storage(tmp_path / "data")
    with monkeypatch.context() as patched:
        patched.setattr(storage_wal.os, "fsync", volume_full)
        storage.open()
    log = Log(storage)
    try:
        assert os.path.getsize(wal_file(storage)) < storage_wal.working_size(4096) // 8
        assert "no room to zero-fill the WAL" in caplog.text
        for n, events in enumerate(single_events(20)):
            await log.append(f"s{n % 3}", "any", events)
        assert storage.head == 20
    finally:
        storage.close()


APPENDER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from evstore.node.storage import Storage, threads, wal
    from evstore.node.log import Log
    from tests.unit.test_wal_zero_fill import single_events

    # the checkpointer rewinds the WAL every 300 frames or so: at the kill, the WAL holds the newest frames
    # written over older ones (stale frames of an earlier cycle after them), then zeros
    threads.CHECKPOINT_EVERY = 0.02
    wal.WAL_REWIND_FRAMES = 300

    async def main():
        storage = Storage(Path(sys.argv[1]))
        storage.open()
        log = Log(storage)
        for n, events in enumerate(single_events(int(sys.argv[2]))):
            await log.append(f"s{n % 7}", "any", events)
        with open(wal.wal_path(storage.path), "rb") as file:
            resets = int.from_bytes(file.read(16)[12:16], "big")  # the WAL header's checkpoint sequence
        print(storage.head, resets, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def append_then_sigkill(data_dir: Path, count: int) -> tuple[int, int]:
    """Appends `count` single events in a process of their own, then SIGKILLs it; the head it acknowledged and
    how many times its WAL was rewound."""
    appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(data_dir), str(count)], stdout=subprocess.PIPE,
                                text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        acknowledged = appender.stdout.readline()
        assert acknowledged, f"the appender exited with {appender.wait(30)}"
        head, resets = acknowledged.split()
        return int(head), int(resets)
    finally:
        appender.send_signal(signal.SIGKILL)
        appender.wait(30)
        appender.stdout.close()


async def test_a_wal_left_by_a_sigkill_keeps_every_acknowledged_append(tmp_path):
    """Twice (the second time on a log that a clean close checkpointed): at each kill the WAL holds its newest
    frames written over older ones, then zeros. Each reopen finds every acknowledged event, and extends the
    file only past its end."""
    data_dir = tmp_path / "data"
    for kills in (1, 2):
        acknowledged, resets = append_then_sigkill(data_dir, 400)
        assert resets >= 2, "the WAL was not rewound before the kill: the test would not test frames over frames"
        storage = Storage(data_dir)
        log = Log(storage)
        await log.open()
        try:
            assert log.head == acknowledged == 400 * kills
            page = await log.read_all(start=1, limit=1000)
            assert [r.position for r in page.records] == list(range(1, acknowledged + 1))
            assert os.path.getsize(wal_file(storage)) >= storage_wal.working_size(4096)
        finally:
            await log.close()
