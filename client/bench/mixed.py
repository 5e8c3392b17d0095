"""A mixed read/write benchmark shaped like the Event Store Benchmark Suite's `cqrs-read-model` scenario:
8,000 streams holding 30,000 events are written first, then 4 writers append single 384-byte events to random
streams while 24 readers read random streams in pages of 50, paced so that 85 % of operations are reads.
Latency percentiles (p50, p99, p99.9) per operation, for a node this benchmark starts and for eventsourcing's
PostgreSQL recorder against a PostgreSQL server started for the run, on the same workload. Only 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
import orjson

from ..harness.localpostgres import PostgresProcess
from .append import BenchError, LocalNode, event_data, percentile, process_cpu

STREAMS = 8_000
EVENTS = 30_000
WRITERS = 4
READERS = 24
PAGE = 50
EVENT_SIZE = 384
READ_SHARE = 0.85
FILL_CONCURRENCY = 16


@dataclass
class OpStats:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None

    def summary(self, seconds: float) -> dict:
        ordered = sorted(self.latencies)
        return {"ops": len(ordered), "opsPerSecond": round(len(ordered) / seconds, 1) if seconds else 0.0,
                "errors": self.errors, "firstError": self.first_error,
                **{f"p{label}Ms": round(percentile(ordered, q) * 1000, 3)
                   for label, q in (("50", 0.50), ("99", 0.99), ("99.9", 0.999))}}


class Mix:
    """Keeps writes at (1 - READ_SHARE) of all operations: a writer waits until enough reads have been done."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.deadline = float("inf")  # set by start(), once every reader and writer is ready
        self.reads = OpStats()
        self.writes = OpStats()
        self.cond = threading.Condition()

    def start(self) -> None:
        self.deadline = time.perf_counter() + self.duration

    def live(self) -> bool:
        return time.perf_counter() < self.deadline

    def write_allowed(self) -> bool:
        return (len(self.writes.latencies) + 1) * READ_SHARE <= len(self.reads.latencies) * (1 - READ_SHARE) + 1

    def wait_write_turn(self) -> bool:
        with self.cond:
            while self.live() and not self.write_allowed():
                self.cond.wait(0.05)
        return self.live()

    def done(self, stats: OpStats, started: float, error: BaseException | None = None) -> None:
        with self.cond:
            if error is None:
                stats.latencies.append(time.perf_counter() - started)
            else:
                stats.errors += 1
                stats.first_error = stats.first_error or f"{type(error).__name__}: {error}"[:300]
            self.cond.notify_all()


@dataclass(frozen=True)
class Scenario:
    streams: int = STREAMS
    events: int = EVENTS
    duration: float = 20.0

    def fill_plan(self) -> list[tuple[int, int]]:
        """(stream index, events) of the prepopulation: the events spread over the streams as evenly as they go."""
        per, extra = divmod(self.events, self.streams)
        return [(i, per + (1 if i < extra else 0)) for i in range(self.streams)]


QUICK = Scenario(streams=200, events=750, duration=0.5)  # for tests


# -- evstore over HTTP --------------------------------------------------------------------------------

def _cpu_summary(mix: Mix, server: float | None, client: float) -> dict:
    ops = len(mix.reads.latencies) + len(mix.writes.latencies)
    return {"serverCpuUsPerOp": round(server / ops * 1e6, 1) if server is not None and ops else None,
            "clientCpuUsPerOp": round(client / ops * 1e6, 1) if ops else None}


async def run_evstore(url: str, scenario: Scenario, data: bytes, server_cpu: Callable[[], float]) -> dict:
    run = uuid.uuid4().hex[:6]
    names = [f"mix{run}-{i}" for i in range(scenario.streams)]
    paths = [f"{url}/v1/streams/{urllib.parse.quote(n, safe='')}" for n in names]
    event = b'{"type":"MixEvent","data":' + data + b"}"
    connector = aiohttp.TCPConnector(limit=WRITERS + READERS + FILL_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def post(path: str, count: int) -> None:
            body = b'{"expectedVersion":"any","events":[' + b",".join([event] * count) + b"]}"
            async with session.post(path, data=body, headers={"Content-Type": "application/json"}) as reply:
                payload = await reply.read()
                if reply.status != 200:
                    raise BenchError(f"append: HTTP {reply.status} {payload[:200]!r}")

        plan = iter(scenario.fill_plan())

        async def filler() -> None:
            for index, count in plan:
                await post(paths[index], count)

        filled = time.perf_counter()
        await asyncio.gather(*(filler() for _ in range(FILL_CONCURRENCY)))
        fill_seconds = time.perf_counter() - filled

        mix = Mix(scenario.duration)
        wake = asyncio.Event()

        async def reader(rng: random.Random) -> None:
            while mix.live():
                started = time.perf_counter()
                try:
                    async with session.get(paths[rng.randrange(scenario.streams)], params={"limit": PAGE}) as reply:
                        payload = await reply.read()
                        if reply.status != 200:
                            raise BenchError(f"read: HTTP {reply.status} {payload[:200]!r}")
                    orjson.loads(payload)
                except (aiohttp.ClientError, asyncio.TimeoutError, BenchError) as exc:
                    mix.done(mix.reads, started, exc)
                    continue
                mix.done(mix.reads, started)
                wake.set()

        async def writer(rng: random.Random) -> None:
            while mix.live():
                while mix.live() and not mix.write_allowed():
                    wake.clear()
                    try:
                        await asyncio.wait_for(wake.wait(), 0.05)
                    except asyncio.TimeoutError:
                        pass
                if not mix.live():
                    return
                started = time.perf_counter()
                try:
                    await post(paths[rng.randrange(scenario.streams)], 1)
                except (aiohttp.ClientError, asyncio.TimeoutError, BenchError) as exc:
                    mix.done(mix.writes, started, exc)
                    continue
                mix.done(mix.writes, started)

        began, server, client = time.perf_counter(), server_cpu(), time.process_time()
        mix.start()
        await asyncio.gather(*(reader(random.Random(i)) for i in range(READERS)),
                             *(writer(random.Random(1000 + i)) for i in range(WRITERS)))
        seconds = time.perf_counter() - began
        cpu = _cpu_summary(mix, server_cpu() - server, time.process_time() - client)
    return {"fillSeconds": round(fill_seconds, 2), "seconds": round(seconds, 2),
            "read": mix.reads.summary(seconds), "write": mix.writes.summary(seconds), **cpu}


# -- eventsourcing's PostgreSQL recorder ----------------------------------------------------------------

def run_postgres(server: PostgresProcess, scenario: Scenario, data: bytes) -> dict:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    datastore = PostgresDatastore("postgres", "127.0.0.1", server.port, server.user, "",
                                  pool_size=WRITERS + READERS, max_overflow=0)
    try:
        recorder = PostgresApplicationRecorder(datastore)
        recorder.create_table()
        ids = [uuid.uuid4() for _ in range(scenario.streams)]
        versions = [0] * scenario.streams
        topic = "bench:MixEvent"
        filled = time.perf_counter()
        batch: list = []
        for index, count in scenario.fill_plan():
            for _ in range(count):
                versions[index] += 1
                batch.append(StoredEvent(ids[index], versions[index], topic, data))
            if len(batch) >= 500:
                recorder.insert_events(batch)
                batch = []
        if batch:
            recorder.insert_events(batch)
        fill_seconds = time.perf_counter() - filled

        mix = Mix(scenario.duration)
        lock = threading.Lock()
        def server_cpu() -> float:
            return process_cpu(server.postmaster_pid, children=True)

        opened: dict[str, float] = {}

        def open_window() -> None:  # the window, its clock and CPU counters start when every thread runs
            opened.update(began=time.perf_counter(), server=server_cpu(), client=time.process_time())
            mix.start()

        # starting 28 threads that open connections under the GIL can take longer than a --quick window
        ready = threading.Barrier(READERS + WRITERS, action=open_window)

        def reader(rng: random.Random) -> None:
            ready.wait(timeout=60)
            while mix.live():
                started = time.perf_counter()
                try:
                    recorder.select_events(ids[rng.randrange(scenario.streams)], limit=PAGE)
                except Exception as exc:  # the library's own errors: count them, keep going
                    mix.done(mix.reads, started, exc)
                    continue
                mix.done(mix.reads, started)

        def writer(rng: random.Random) -> None:
            ready.wait(timeout=60)
            while mix.wait_write_turn():
                index = rng.randrange(scenario.streams)
                with lock:  # the next version of the stream, as an aggregate would know it
                    versions[index] += 1
                    version = versions[index]
                started = time.perf_counter()
                try:
                    recorder.insert_events([StoredEvent(ids[index], version, topic, data)])
                except Exception as exc:
                    mix.done(mix.writes, started, exc)
                    continue
                mix.done(mix.writes, started)

        threads = [threading.Thread(target=reader, args=(random.Random(i),)) for i in range(READERS)]
        threads += [threading.Thread(target=writer, args=(random.Random(1000 + i),)) for i in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not opened:
            raise BenchError("the reference's threads did not all start")
        seconds = time.perf_counter() - opened["began"]
        cpu = _cpu_summary(mix, server_cpu() - opened["server"], time.process_time() - opened["client"])
        return {"fillSeconds": round(fill_seconds, 2), "seconds": round(seconds, 2),
                "read": mix.reads.summary(seconds), "write": mix.writes.summary(seconds), **cpu}
    finally:
        datastore.close()


def _line(system: str, op: str, s: dict) -> str:
    errors = f"  ERRORS {s['errors']}: {s['firstError']}" if s["errors"] else ""
    return (f"  {system:<13} {op:<6} {s['opsPerSecond']:>9,.0f} ops/s  p50 {s['p50Ms']:7.2f} ms  "
            f"p99 {s['p99Ms']:7.2f} ms  p99.9 {s['p99.9Ms']:7.2f} ms{errors}")


def _cpu_line(system: str, r: dict) -> str:
    return (f"  {system:<13} cpu per operation: server {r['serverCpuUsPerOp']} us, load generator "
            f"{r['clientCpuUsPerOp']} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/mixed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the mixed phase (default 20)")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip eventsourcing's PostgreSQL recorder")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--quick", action="store_true", help="a tiny run (for tests): 200 streams, 750 events, 0.5 s")
    parser.add_argument("--node-arg", action="append", default=[], dest="node_args")
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    scenario = QUICK if ns.quick else Scenario(duration=ns.duration)
    data = event_data(EVENT_SIZE)
    out = sys.stderr if ns.json else sys.stdout
    report: dict = {"settings": {"streams": scenario.streams, "events": scenario.events, "writers": WRITERS,
                                 "readers": READERS, "page": PAGE, "eventSize": EVENT_SIZE, "readShare": READ_SHARE,
                                 "duration": scenario.duration}}
    node = LocalNode(ns.node_args)
    try:
        node.start()
        report["evstore"] = asyncio.run(run_evstore(node.url, scenario, data, lambda: process_cpu(node.pid)))
    except BenchError as exc:
        print(f"bench/mixed.py: {exc}", file=sys.stderr)
        return 1
    finally:
        node.stop()
    for op in ("read", "write"):
        print(_line("evstore", op, report["evstore"][op]), file=out)
    print(_cpu_line("evstore", report["evstore"]), file=out)
    if ns.reference:
        with PostgresProcess() as server:
            report["reference"] = " ".join(f"{n}={server.setting(n)}" for n in
                                           ("server_version", "fsync", "synchronous_commit"))
            report["eventsourcing"] = run_postgres(server, scenario, data)
        for op in ("read", "write"):
            print(_line("eventsourcing", op, report["eventsourcing"][op]), file=out)
        print(_cpu_line("eventsourcing", report["eventsourcing"]), file=out)
        print(f"  reference: postgres {report['reference']}", file=out)
    if ns.json:
        print(json.dumps(report, indent=2))
    errors = sum(report[s][op]["errors"] for s in ("evstore", "eventsourcing") if s in report
                 for op in ("read", "write"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
