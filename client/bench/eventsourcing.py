"""`bench/eventsourcing.py`: one eventsourcing application workload through three persistence modules:
evstore (`evstore.eventsourcing` on a local node), eventsourcing's SQLite module (a file database with
its default settings) and its PostgreSQL module (on a PostgreSQL server this script starts: Debian's
`postgresql`, initdb into a temporary directory as user postgres, on a loopback port).

Workload, at 1 and 16 threads, each system on a fresh store:
- create: `save()` of a new aggregate (one event) per call: the per-call insert cost;
- append: `save()` of `--events` more events to each aggregate, one event per call;
- read: `repository.get()` of every aggregate (its whole history);
- follow: one follower from the start through every notification (`subscribe()`, or pages of
  `select_notifications` for SQLite, which has no subscriptions), whatever the thread count: how
  fast a process application catches up.
Prints operations per second per phase and system, and the ratios evstore/SQLite and
evstore/PostgreSQL. Only 127.0.0.1 is contacted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from ..harness.localnode import NodeProcess, free_port

PHASES = ("create", "append", "read", "follow")
SYSTEMS = ("evstore", "sqlite", "postgres")
PG_BIN = Path("/usr/lib/postgresql")
POSTGRES_USER = "postgres"
FOLLOW_PAGE = 500


class Item(Aggregate):
    @event("Created")
    def __init__(self, name: str) -> None:
        self.name = name
        self.changes = 0

    @event("Changed")
    def change(self, value: int) -> None:
        self.changes += 1


class Inventory(Application[UUID]):
    pass


# -- stores ------------------------------------------------------------------------------------------

@contextmanager
def evstore_store(workdir: Path) -> Iterator[dict[str, str]]:
    data = workdir / "evstore" / "data"
    data.mkdir(parents=True)
    node = NodeProcess(data, args=("--log-level", "warning")).start()
    try:
        yield {"PERSISTENCE_MODULE": "evstore.eventsourcing", "EVSTORE_URL": node.url}
    finally:
        node.stop()


@contextmanager
def sqlite_store(workdir: Path) -> Iterator[dict[str, str]]:
    yield {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(workdir / "sqlite.db")}


def pg_tool(name: str) -> str:
    versions = sorted(PG_BIN.glob(f"*/bin/{name}"))
    if not versions:
        raise SystemExit(f"PostgreSQL's {name} not found under {PG_BIN}: apt-get install postgresql")
    return str(versions[-1])


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary directory, run as user postgres on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.started = False

    def _as_postgres(self, *command: str, **kwargs: Any) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", POSTGRES_USER, "--", *command], check=True, capture_output=True,
                              text=True, timeout=120, **kwargs)

    def start(self) -> "PostgresServer":
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, POSTGRES_USER)
        self._as_postgres(pg_tool("initdb"), "-D", str(self.data), "--auth=trust", "-U", POSTGRES_USER)
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        self._as_postgres(pg_tool("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                          "-o", options, "start")
        self.started = True
        return self

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=POSTGRES_USER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        if self.started:
            self._as_postgres(pg_tool("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.started = False


@contextmanager
def postgres_store(server: PostgresServer, name: str, threads: int) -> Iterator[dict[str, str]]:
    server.create_database(name)
    yield {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": name, "POSTGRES_HOST": "127.0.0.1",
           "POSTGRES_PORT": str(server.port), "POSTGRES_USER": POSTGRES_USER, "POSTGRES_PASSWORD": "",
           "POSTGRES_POOL_SIZE": str(max(5, threads))}


# -- the workload ------------------------------------------------------------------------------------

def timed(threads: int, jobs: list[Any], work: Callable[[Any], None]) -> float:
    """Operations per second of `work` over `jobs` on `threads` threads."""
    started = time.perf_counter()
    if threads == 1:
        for job in jobs:
            work(job)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(work, jobs):
                pass
    return len(jobs) / (time.perf_counter() - started)


def follow(app: Application[UUID], total: int) -> None:
    """Take every notification as a process application would: a live subscription where the module
    has one (evstore, PostgreSQL), else pages of select_notifications (SQLite has no subscriptions)."""
    try:
        subscription = app.recorder.subscribe(gt=None)
    except NotImplementedError:
        seen, last = 0, 0
        while seen < total:
            page = app.recorder.select_notifications(last, FOLLOW_PAGE, inclusive_of_start=False)
            seen, last = seen + len(page), page[-1].id if page else last
        return
    seen = 0
    with subscription:
        for _ in subscription:
            seen += 1
            if seen == total:
                return


def run_workload(env: dict[str, str], *, threads: int, aggregates: int, events: int) -> dict[str, float]:
    app = Inventory(env=env)
    try:
        items = [Item(f"item-{i}") for i in range(aggregates)]
        rates = {"create": timed(threads, items, lambda item: app.save(item))}

        def append(item: Item) -> None:
            for value in range(events):
                item.change(value)
                app.save(item)

        rates["append"] = timed(threads, items, append) * events
        rates["read"] = timed(threads, [item.id for item in items], lambda item_id: app.repository.get(item_id))
        total = aggregates * (1 + events)
        started = time.perf_counter()
        follow(app, total)
        rates["follow"] = total / (time.perf_counter() - started)
        return rates
    finally:
        app.close()


# -- report ------------------------------------------------------------------------------------------

def report(results: dict[tuple[str, int], dict[str, float]], thread_counts: list[int]) -> str:
    lines = []
    for threads in thread_counts:
        lines.append(f"threads={threads}")
        lines.append(f"  {'phase':<8}" + "".join(f"{s + ' ops/s':>18}" for s in SYSTEMS if (s, threads) in results)
                     + f"{'evstore/sqlite':>16}{'evstore/postgres':>18}")
        for phase in PHASES:
            row = f"  {phase:<8}"
            for system in SYSTEMS:
                if (system, threads) in results:
                    row += f"{results[(system, threads)][phase]:>18,.0f}"
            ours = results.get(("evstore", threads), {}).get(phase)
            for other, width in (("sqlite", 16), ("postgres", 18)):
                theirs = results.get((other, threads), {}).get(phase)
                row += f"{(ours / theirs):>{width}.2f}x" if ours and theirs else f"{'-':>{width + 1}}"
            lines.append(row)
    one = {s: results.get((s, 1), {}).get("create") for s in SYSTEMS}
    if one["evstore"] and one["sqlite"]:
        ours_us, sqlite_us = 1e6 / one["evstore"], 1e6 / one["sqlite"]
        lines.append(f"per-call insert at 1 thread: evstore {ours_us:.0f} us, sqlite {sqlite_us:.0f} us "
                     f"(evstore costs {ours_us / sqlite_us:.2f}x SQLite's)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aggregates", type=int, default=1000, help="aggregates per run (default 1000)")
    parser.add_argument("--events", type=int, default=4, help="events appended to each after creation (default 4)")
    parser.add_argument("--threads", default="1,16", help="thread counts, comma-separated (default 1,16)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"default {','.join(SYSTEMS)}")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    results: dict[tuple[str, int], dict[str, float]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="evstore-bench-es-"))
    os.chmod(workdir, 0o755)
    server = PostgresServer(workdir / "postgres") if "postgres" in systems else None
    try:
        if server is not None:
            server.start()
        for threads in thread_counts:
            for system in systems:
                run_dir = workdir / f"{system}-{threads}"
                run_dir.mkdir()
                if system == "evstore":
                    store = evstore_store(run_dir)
                elif system == "sqlite":
                    store = sqlite_store(run_dir)
                else:
                    assert server is not None
                    store = postgres_store(server, f"bench{threads}", threads)
                with store as env:
                    rates = run_workload(env, threads=threads, aggregates=args.aggregates, events=args.events)
                results[(system, threads)] = rates
                print(f"{system:<9} threads={threads:<3} " + "  ".join(f"{p} {rates[p]:,.0f}/s" for p in PHASES),
                      flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(results, thread_counts))
    if args.json:
        print(json.dumps({f"{s}@{t}": r for (s, t), r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
