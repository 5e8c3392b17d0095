"""The WAL stays bounded under continuous writes: SQLite rewinds it only after a checkpoint that copied every
frame, which a passive checkpoint beside a busy writer never achieves, so the checkpointer catches up and
rewinds it (evstore.node.storage.checkpoint). Real SQLite file, real writer and checkpointer threads."""
from __future__ import annotations

import asyncio
import os

import orjson
import pytest

from evstore.node.storage import threads as storage_threads, wal as storage_wal
from evstore.node.log import Log, NewEvent
from evstore.node.storage import Storage
from evstore.ids import uuid7_bytes

WRITERS, APPENDS, EVENTS = 32, 150, 10
DATA = orjson.dumps({"padding": "x" * 1000})


@pytest.fixture
def small_wal(monkeypatch):
    monkeypatch.setattr(storage_threads, "CHECKPOINT_EVERY", 0.02)
    monkeypatch.setattr(storage_wal, "WAL_REWIND_FRAMES", 1000)  # 4 MiB of 4 KiB pages
    monkeypatch.setattr(storage_wal, "WAL_SIZE_LIMIT", 4 * 1024 * 1024)


async def largest_wal_while_writing(tmp_path) -> tuple[int, int]:
    storage = Storage(tmp_path / "data")
    storage.open()
    wal = storage_wal.wal_path(storage.path)
    log = Log(storage)
    largest = 0

    async def writer(n: int) -> None:
        nonlocal largest
        for _ in range(APPENDS):
            events = [NewEvent(i, "Padded", DATA, b"{}", given_id=False) for i in uuid7_bytes(EVENTS)]
            await log.append(f"s{n}", "any", events)
            largest = max(largest, os.path.getsize(wal))

    try:
        await asyncio.gather(*(writer(n) for n in range(WRITERS)))
        return largest, storage.head
    finally:
        storage.close()


async def test_the_wal_is_rewound_under_continuous_writes(tmp_path, small_wal):
    largest, head = await largest_wal_while_writing(tmp_path)
    assert head == WRITERS * APPENDS * EVENTS
    written = head * len(DATA)  # ~48 MB of event data went through the WAL
    assert largest < written / 3, f"the WAL grew to {largest} bytes for {written} bytes of events"


async def test_without_rewinding_the_wal_grows_with_the_load(tmp_path, small_wal, monkeypatch):
    """The control: passive checkpoints alone (what the node did before) let the WAL grow with the load, so the
    test above measures the rewind and not luck."""
    monkeypatch.setattr(storage_wal, "WAL_REWIND_FRAMES", 10**9)
    largest, head = await largest_wal_while_writing(tmp_path)
    assert largest > head * len(DATA) / 3
