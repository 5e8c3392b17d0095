"""One process at a time has a data directory's log open (evstore.node.storage.threads.lock_data_dir): a second
Storage, in this process or another, is refused with the holder's PID and changes nothing; closing, or the
holder's death, frees it. Real files, a real `evstore serve` process."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from evstore.client.harness.localnode import free_port
from evstore.node.storage import Storage, ids as storage_ids
from evstore.node.storage.threads import DataDirInUse


def test_a_second_open_of_a_data_dir_is_refused_until_the_first_closes(tmp_path):
    first = Storage(tmp_path / "data")
    first.open()
    try:
        with pytest.raises(DataDirInUse, match=f"PID {os.getpid()}"):
            Storage(tmp_path / "data").open()
    finally:
        first.close()
    again = Storage(tmp_path / "data")
    again.open()
    again.close()


def test_an_open_that_fails_after_taking_the_lock_releases_it(tmp_path, monkeypatch):
    """Each step of an open after the lock (the schema, the zero fill, reading the log's state) may fail: the
    lock goes with it, and the next open is not refused as if the failed one still held the directory."""
    with monkeypatch.context() as patched:
        patched.setattr(storage_ids.IdWindow, "attach", lambda self, conn, head: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            Storage(tmp_path / "data").open()
    storage = Storage(tmp_path / "data")
    storage.open()
    storage.close()


def test_a_node_started_on_a_data_dir_in_use_stops_with_a_message(tmp_path):
    holder = Storage(tmp_path / "data")
    holder.open()
    try:
        done = subprocess.run([sys.executable, "-m", "evstore.node", "--data-dir", str(tmp_path / "data"),
                               "--port", str(free_port())], capture_output=True, text=True, timeout=60,
                              env={k: v for k, v in os.environ.items() if not k.startswith("EVSTORE_")})
    finally:
        holder.close()
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"another process (PID {os.getpid()}) has the log in" in done.stderr, done.stderr[-2000:]
