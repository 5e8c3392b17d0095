"""What the upkeep of the event-id index costs per random id on a log of a given size: format 4's merge of a
sorted batch into one table of every id, against format 5's runs (bench/RESULTS.md, issue 12 point 7).

    python bench/id_merge.py DATA_DIR [--batches 250000,1000000] [--designs one-table,runs]

DATA_DIR is a node's data directory (for instance one that `bench/growth.py --keep` left). The script works
on a copy of it in a temporary directory, never on the original. SQLite settings as the node's writer (WAL,
synchronous FULL, its cache), WAL frames counted with the checkpoint off.

- one-table (format 4): `event_ids (id PRIMARY KEY, position) WITHOUT ROWID` holding every id of the log (built
  in id order from the log if it does not hold them all), then for each batch size that many fresh random ids
  inserted in id order in one transaction.
- runs (format 5, node/storage/ids.py's own code): for each batch size, RUN_FANIN windows of that many fresh
  random ids, each written into a run, and the merges of runs that follows (with the log's own runs), the time
  and frames per id of each kind of slice.
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
from evstore.node.storage import ids as id_index
from evstore.node.storage.wal import connect


def _frames(db: Path, page_size: int) -> float:
    wal = Path(str(db) + "-wal")
    return wal.stat().st_size / (page_size + 24) if wal.exists() else 0.0  # a frame: a 24-byte header and a page


def one_table(db: Path, batches: list[int]) -> list[str]:
    conn = connect(db, synchronous="FULL", cache_kib=WRITER_CACHE_KIB)
    try:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        began = time.perf_counter()
        table = "one_table_ids"
        conn.execute(f"CREATE TABLE {table} (id BLOB PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute(f"INSERT INTO {table} SELECT id, position FROM events ORDER BY id")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        lines = [f"one-table: built a table of the log's {count:,} ids in {time.perf_counter() - began:.1f} s"]
        for size in batches:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            ids = sorted(os.urandom(16) for _ in range(size))
            began = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(f"INSERT INTO {table} VALUES (?, 0)", ((event_id,) for event_id in ids))
            conn.execute("COMMIT")
            took = time.perf_counter() - began
            frames = _frames(db, page_size)
            lines.append(f"one-table: merge of {size:,} sorted random ids: {took:.2f} s, {frames:,.0f} WAL frames "
                         f"({frames / size:.3f} and {took / size * 1e6:.2f} us per id)")
        return lines
    finally:
        conn.close()


def runs(db: Path, batches: list[int]) -> list[str]:
    conn = connect(db, synchronous="FULL", cache_kib=WRITER_CACHE_KIB)
    lines = []
    try:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        head = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]
        window = id_index.IdWindow(db.parent)
        began = time.perf_counter()
        window.attach(conn, head=head)
        levels = [run.level for run in window.run_set.runs]
        lines.append(f"runs: opened the index in {time.perf_counter() - began:.1f} s; the log's runs by level: "
                     f"{ {level: levels.count(level) for level in sorted(set(levels))} }")
        for size in batches:
            id_index.WINDOW_MERGE_ROWS = size
            spent = {"window": [0.0, 0.0], "runs": [0.0, 0.0]}  # seconds, frames
            for _ in range(id_index.RUN_FANIN):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(f"INSERT INTO {id_index.WINDOW_TABLE} VALUES (?, ?)",
                                 ((os.urandom(16), head) for _ in range(size)))
                conn.execute("COMMIT")
                window.added(size)
                while window.merge_due(head):
                    kind = "window" if window.merging_through is not None or window.rows >= size else "runs"
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    started = time.perf_counter()
                    window.merge_slice(conn, head)
                    spent[kind][0] += time.perf_counter() - started
                    spent[kind][1] += _frames(db, page_size)
            total = size * id_index.RUN_FANIN
            for kind, (took, frames) in spent.items():
                lines.append(f"runs: {id_index.RUN_FANIN} windows of {size:,} random ids, {kind} slices: "
                             f"{took:.2f} s, {frames:,.0f} WAL frames ({frames / total:.3f} and "
                             f"{took / total * 1e6:.2f} us per id)")
        return lines
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/id_merge.py", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="a node's data directory (left unchanged: the script copies it)")
    parser.add_argument("--batches", default="250000,1000000", help="ids per merge or window, comma-separated")
    parser.add_argument("--designs", default="one-table,runs")
    args = parser.parse_args(argv)
    batches = [int(size) for size in args.batches.split(",") if size]
    source = Path(args.data_dir)
    if not (source / DB_FILE).is_file():
        parser.error(f"no {DB_FILE} in {args.data_dir}")
    for design in args.designs.split(","):
        measure = {"one-table": one_table, "runs": runs}[design]
        with tempfile.TemporaryDirectory(prefix="evstore-id-merge-", dir=source.parent) as work:
            for path in source.iterdir():  # the database (a node stopped cleanly leaves no WAL) and the filter
                if path.is_file():
                    shutil.copyfile(path, Path(work) / path.name)
            for line in measure(Path(work) / DB_FILE, batches):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
