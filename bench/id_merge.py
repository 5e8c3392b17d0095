"""What merging sorted batches of random event ids into a log's id table costs: design input for an id index
with sequential inserts (bench/RESULTS.md, issue 12 point 7).

    python bench/id_merge.py DATA_DIR [--batches 3400,50000,250000,1000000]

DATA_DIR is a node's data directory (for instance one that `bench/growth.py --keep` left). The script works
on a copy of its database in a temporary directory, never on the original: it builds
`event_ids (id PRIMARY KEY, position) WITHOUT ROWID` from the log's ids in id order (what a migration would
do; a format-4 log has it), then, for each batch size, inserts that many fresh random ids in id order in one
transaction and prints the time and the WAL frames written, per id. SQLite settings as the node's writer: WAL, synchronous FULL,
16 MiB cache.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from evstore.node.storage import DB_FILE, WRITER_CACHE_KIB


def measure(db: Path, batches: list[int]) -> list[str]:
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        began = time.perf_counter()
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'event_ids'").fetchone() is None:  # format 3
            conn.execute("CREATE TABLE event_ids (id BLOB PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID")
            conn.execute("INSERT INTO event_ids SELECT id, position FROM events ORDER BY id")
        count = conn.execute("SELECT count(*) FROM event_ids").fetchone()[0]
        lines = [f"built event_ids of {count:,} ids in {time.perf_counter() - began:.1f} s"]
        wal = Path(str(db) + "-wal")
        for size in batches:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            ids = sorted(os.urandom(16) for _ in range(size))
            began = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO event_ids VALUES (?, 0)", ((event_id,) for event_id in ids))
            conn.execute("COMMIT")
            took = time.perf_counter() - began
            frames = wal.stat().st_size / (page_size + 24)  # a WAL frame: a 24-byte header and a page
            lines.append(f"merge of {size:,} sorted random ids: {took:.2f} s, {frames:,.0f} WAL frames "
                         f"({frames / size:.3f} and {took / size * 1e6:.1f} us per id)")
        return lines
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/id_merge.py", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="a node's data directory (left unchanged: the script copies it)")
    parser.add_argument("--batches", default="3400,50000,250000,1000000", help="ids per merge, comma-separated")
    args = parser.parse_args(argv)
    batches = [int(size) for size in args.batches.split(",") if size]
    source = Path(args.data_dir) / DB_FILE
    if not source.is_file():
        parser.error(f"no {DB_FILE} in {args.data_dir}")
    with tempfile.TemporaryDirectory(prefix="evstore-id-merge-") as work:
        copy = Path(work) / DB_FILE
        shutil.copyfile(source, copy)
        wal = Path(str(source) + "-wal")  # a node stopped cleanly leaves none
        if wal.exists():
            shutil.copyfile(wal, str(copy) + "-wal")
        for line in measure(copy, batches):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
