"""Where the cost of random event ids goes, and what would not remove it: design input for the id index
(bench/RESULTS.md, issue 12 point 7).

    python bench/id_index_layouts.py [--events 3000000] [--groups 40] [--group 3400] [--merges 50000,250000,1000000]

For each layout the script builds a log-like table of `--events` rows (position, a 16-byte id, 200 bytes of
data) in a temporary directory, then appends `--groups` group commits of `--group` rows each, 100 rows per
INSERT as the node's writer does, and prints rows/s, CPU per row and COMMIT time per group:

- `sequential`: time-ordered ids (what node-made and UUIDv7 ids are), a UNIQUE index in the log's file;
- `random`: random ids (UUIDv4), the same index (what the node does today);
- `random-unsynced-file`: random ids, the index in a second file ATTACHed with `synchronous=NORMAL`, so its
  pages are never fsync'd at COMMIT (what moving the id index out of the synced log would buy).

Then it prints what the parts of an LSM-style index would cost on the `random-unsynced-file` layout's table:
probing it for fresh ids (a lookup per id a client sends) and merging sorted batches into it. SQLite settings
as the node's writer: WAL, synchronous FULL, 16 MiB cache.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from evstore.node.storage import WRITER_CACHE_KIB

PAYLOAD = b"x" * 200
ROWS_PER_INSERT = 100


def new_id(position: int, layout: str) -> bytes:
    if layout == "sequential":
        return position.to_bytes(8, "big") + os.urandom(8)
    return os.urandom(16)


def connect(directory: Path, layout: str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(directory / "log.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
    if layout == "random-unsynced-file":
        conn.execute(f"ATTACH '{directory / 'ids.db'}' AS ids")
        conn.execute("PRAGMA ids.journal_mode=WAL")
        conn.execute("PRAGMA ids.synchronous=NORMAL")
        conn.execute(f"PRAGMA ids.cache_size=-{WRITER_CACHE_KIB}")
    return conn


def build(conn: sqlite3.Connection, layout: str, events: int) -> float:
    began = time.perf_counter()
    conn.execute("CREATE TABLE events (position INTEGER PRIMARY KEY, id BLOB NOT NULL, data BLOB NOT NULL)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events VALUES (?, ?, ?)",
                     ((p, new_id(p, layout), PAYLOAD) for p in range(1, events + 1)))
    conn.execute("COMMIT")
    if layout == "random-unsynced-file":
        conn.execute("CREATE TABLE ids.event_ids (id BLOB PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute("INSERT INTO ids.event_ids SELECT id, position FROM events ORDER BY id")
        conn.execute("PRAGMA ids.wal_checkpoint(TRUNCATE)")
    else:
        conn.execute("CREATE UNIQUE INDEX events_by_id ON events(id)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - began


def append_groups(conn: sqlite3.Connection, layout: str, events: int, groups: int, group: int) -> str:
    event_marks = ",".join(["(?,?,?)"] * ROWS_PER_INSERT)
    id_marks = ",".join(["(?,?)"] * ROWS_PER_INSERT)
    position, commit_seconds = events, 0.0
    began, cpu_began = time.perf_counter(), time.process_time()
    for number in range(groups):
        conn.execute("BEGIN IMMEDIATE")
        for _insert in range(group // ROWS_PER_INSERT):
            rows, id_rows = [], []
            for _row in range(ROWS_PER_INSERT):
                position += 1
                event_id = new_id(position, layout)
                rows += (position, event_id, PAYLOAD)
                id_rows += (event_id, position)
            conn.execute(f"INSERT INTO events VALUES {event_marks}", rows)
            if layout == "random-unsynced-file":
                conn.execute(f"INSERT INTO ids.event_ids VALUES {id_marks}", id_rows)
        committing = time.perf_counter()
        conn.execute("COMMIT")
        commit_seconds += time.perf_counter() - committing
        if number % 5 == 4:  # the node's checkpointer copies the WAL back about this often at this rate
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if layout == "random-unsynced-file":
                conn.execute("PRAGMA ids.wal_checkpoint(PASSIVE)")
    seconds, rows = time.perf_counter() - began, groups * (group // ROWS_PER_INSERT) * ROWS_PER_INSERT
    return (f"{layout:>22}: {rows / seconds:9,.0f} rows/s  {(time.process_time() - cpu_began) / rows * 1e6:5.1f} "
            f"us CPU/row  COMMIT {commit_seconds / groups * 1e3:5.1f} ms/group")


def lsm_parts(conn: sqlite3.Connection, group: int, merges: list[int]) -> list[str]:
    count = conn.execute("SELECT count(*) FROM ids.event_ids").fetchone()[0]
    lines = [f"on an id table of {count:,} ids:"]
    probes, cpu_began, began = max(500, group * 20 // 500 * 500), time.process_time(), time.perf_counter()
    for _chunk in range(probes // 500):
        ids = [os.urandom(16) for _ in range(500)]
        conn.execute(f"SELECT id FROM ids.event_ids WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
    lines.append(f"  probe for fresh ids, 500 per SELECT: {(time.perf_counter() - began) / probes * 1e6:.2f} us/id "
                 f"({(time.process_time() - cpu_began) / probes * 1e6:.2f} CPU)")
    for batch in merges:
        rows = [(event_id, 10**12 + n) for n, event_id in enumerate(sorted(os.urandom(16) for _ in range(batch)))]
        cpu_began, began = time.process_time(), time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO ids.event_ids VALUES (?, ?)", rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA ids.wal_checkpoint(TRUNCATE)")
        per_id = (time.perf_counter() - began) / batch * 1e6
        cpu_per_id = (time.process_time() - cpu_began) / batch * 1e6
        lines.append(f"  merge a sorted batch of {batch:,} ids: {per_id:.2f} us/id ({cpu_per_id:.2f} CPU), "
                     "checkpoint included")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3_000_000, help="rows in the log before the appends")
    parser.add_argument("--groups", type=int, default=40, help="group commits appended per layout")
    parser.add_argument("--group", type=int, default=3400, help="rows per group commit (a multiple of 100)")
    parser.add_argument("--merges", default="50000,250000,1000000",
                        help="sizes of the sorted batches merged into the id table, comma-separated")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="evstore-id-layouts-") as temp:
        for layout in ("sequential", "random", "random-unsynced-file"):
            directory = Path(temp) / layout
            directory.mkdir()
            conn = connect(directory, layout)
            print(f"{layout:>22}: built {args.events:,} rows in {build(conn, layout, args.events):.1f} s", flush=True)
            print(append_groups(conn, layout, args.events, args.groups, args.group), flush=True)
            if layout == "random-unsynced-file":
                print("\n".join(lsm_parts(conn, args.group, [int(n) for n in args.merges.split(",")])), flush=True)
            conn.close()
            for file in directory.iterdir():  # free the disk before the next layout
                file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
