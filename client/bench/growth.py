"""Appends as the log grows, with node-made ids against client-made ones (issue 12 point 7).

For each id mode a fresh standalone node (durability `sync`) is filled, in batches of `--fill-batch` events
from `--fill-concurrency` connections, up to each size of `--sizes`; at each size the append cases run for
`--duration` seconds (after an `os.sync()`, so that they do not measure the fill's writeback) and the node's
RSS and data-directory size are read. In `client` mode every event of the fill and of the cases carries a
fresh random UUID (version 4), as most clients make them (`crypto.randomUUID()`, `uuid.uuid4()`); in
`client-v7` mode a fresh time-ordered UUIDv7, as this project's Python client and eventsourcing module send
them; in `node` mode no event has an id and the node makes UUIDv7 ones. The report ends with each client mode
over node mode per case and size. `--keep DIR` keeps the filled
data directories and `--data-from DIR` starts from copies of them, so trees can be compared on one fill.
Only 127.0.0.1 is contacted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ...ids import uuid7_bytes, uuid_texts
from .append import (EVENT_TYPE, GROUP_COMMIT_SAMPLES, Budget, CaseResult, KeepAliveConnection, LocalNode,
                     _interrupt_on_sigterm, drive_async, event_data, group_commit_delta, parse_metrics, process_cpu,
                     process_memory)

ID_MODES = ("node", "client", "client-v7")
DEFAULT_CASES = ("append_b1_c1", "append_b10_c64", "append_b100_c64")
FILL_STREAMS = 10_000


def parse_case(name: str) -> tuple[int, int]:
    """`append_b10_c64` → (10, 64)."""
    kind, batch, concurrency = name.split("_")
    if kind != "append" or batch[0] != "b" or concurrency[0] != "c":
        raise ValueError(f"not an append case: {name}")
    return int(batch[1:]), int(concurrency[1:])


class Bodies:
    """Append bodies of `batch` events of the same data: without ids (`mode` node), or each with a fresh
    client-made id, random (client) or time-ordered (client-v7)."""

    def __init__(self, *, data: bytes, mode: str) -> None:
        self.data = data
        self.mode = mode
        self._without_ids: dict[int, bytes] = {}

    def body(self, batch: int) -> bytes:
        if self.mode == "node":
            if batch not in self._without_ids:
                event = b'{"type":"' + EVENT_TYPE.encode() + b'","data":' + self.data + b"}"
                self._without_ids[batch] = (b'{"expectedVersion":"any","events":['
                                            + b",".join([event] * batch) + b"]}")
            return self._without_ids[batch]
        tail = b'","type":"' + EVENT_TYPE.encode() + b'","data":' + self.data + b"}"
        texts = random_uuid_texts(batch) if self.mode == "client" else uuid_texts(uuid7_bytes(batch))
        events = [b'{"id":"' + text + tail for text in texts]
        return b'{"expectedVersion":"any","events":[' + b",".join(events) + b"]}"


def random_uuid_texts(count: int) -> list[bytes]:
    """`count` random version-4 UUIDs as text, at a fraction of `uuid.uuid4()`'s cost: the load generator
    shares the cores with the node it measures."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])
    ids = bytes(raw)
    return uuid_texts([ids[offset:offset + 16] for offset in range(0, 16 * count, 16)])


@dataclass
class Point:
    mode: str
    events: int                     # events in the log when the cases ran
    fill_events_per_s: float        # of the fill segment that reached this size
    rss_mb: float
    data_dir_mb: float
    cases: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "events": self.events, "fillEventsPerSecond": round(self.fill_events_per_s, 1),
                "rssMb": round(self.rss_mb, 1), "dataDirMb": round(self.data_dir_mb, 1), "cases": self.cases}


class Driver:
    def __init__(self, node: LocalNode, bodies: Bodies) -> None:
        self.node = node
        self.url = node.url.rstrip("/")
        parsed = urllib.parse.urlsplit(self.url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.bodies = bodies

    async def send(self, connection: KeepAliveConnection, stream: str, batch: int) -> int:
        request = connection.request("POST", f"/v1/streams/{stream}", self.bodies.body(batch))
        status, payload = await connection.send(request)
        if status != 200:
            raise RuntimeError(f"append to {stream}: HTTP {status} {payload[:200]!r}")
        return batch

    async def fill(self, *, events: int, batch: int, concurrency: int, first_request: int) -> float:
        """Append `events` (rounded up to whole batches); returns events per second."""
        requests = -(-events // batch)
        counter = iter(range(first_request, first_request + requests))
        connections = [KeepAliveConnection(self.host, self.port) for _ in range(concurrency)]

        async def worker(connection: KeepAliveConnection) -> None:
            for n in counter:
                await self.send(connection, f"fill-{n % FILL_STREAMS}", batch)

        began = time.perf_counter()
        try:
            await asyncio.gather(*(worker(c) for c in connections))
        finally:
            for connection in connections:
                await connection.close()
        return requests * batch / (time.perf_counter() - began)

    async def head(self, session: aiohttp.ClientSession) -> int:
        async with session.get(self.url + "/v1/all", params={"limit": 1, "direction": "backward"}) as reply:
            return (await reply.json())["head"]

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        async with session.get(self.url + "/metrics") as reply:
            return parse_metrics(await reply.text(), GROUP_COMMIT_SAMPLES)

    async def case(self, session: aiohttp.ClientSession, name: str, *, duration: float, tag: str) -> dict:
        batch, concurrency = parse_case(name)
        streams = [f"case-{tag}-{name}-{i}" for i in range(concurrency)]
        connections = [KeepAliveConnection(self.host, self.port) for _ in range(concurrency)]
        before = await self.metrics(session)
        cpu_before, written_before = process_cpu(self.node.proc.pid), bytes_written(self.node.proc.pid)
        try:
            result = await drive_async(CaseResult("evstore", "append", batch, concurrency),
                                       Budget(duration, 1 << 62),
                                       lambda i: self.send(connections[i], streams[i], batch))
        finally:
            for connection in connections:
                await connection.close()
        result.server_cpu = process_cpu(self.node.proc.pid) - cpu_before
        written = bytes_written(self.node.proc.pid) - written_before
        result.group_commit = group_commit_delta(before, await self.metrics(session))
        return {**result.to_dict(), "bytesWrittenPerEvent": round(written / result.events) if result.events else None}


def bytes_written(pid: int) -> int:
    """Bytes the process passed to write(2) and its kind (`wchar` of /proc/<pid>/io): the WAL's frames, and the
    pages the checkpoints copy into the database file."""
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def directory_mb(path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total / 1e6


async def run_mode(mode: str, args: argparse.Namespace, report) -> list[Point]:
    node = LocalNode(["--durability", "sync"])
    if args.data_from:
        shutil.rmtree(node.data_dir)
        shutil.copytree(Path(args.data_from) / mode, node.data_dir)
    node.start()
    points: list[Point] = []
    try:
        driver = Driver(node, Bodies(data=event_data(args.event_size), mode=mode))
        async with aiohttp.ClientSession() as session:
            in_log, requests_sent = await driver.head(session), 0
            if in_log:
                os.sync()  # what copying the data wrote, on disk before the first case
            for size in args.sizes:
                fill_rate = 0.0
                if size > in_log:
                    requests = -(-(size - in_log) // args.fill_batch)
                    fill_rate = await driver.fill(events=requests * args.fill_batch, batch=args.fill_batch,
                                                  concurrency=args.fill_concurrency, first_request=requests_sent)
                    requests_sent += requests
                    in_log += requests * args.fill_batch
                    os.sync()  # the cases measure appends to a log of this size, not the fill's writeback
                point = Point(mode, in_log, fill_rate, process_memory(node.proc.pid)["rssMb"],
                              directory_mb(node.temp_dir))
                for name in args.cases:
                    point.cases[name] = await driver.case(session, name, duration=args.duration, tag=str(size))
                    in_log += point.cases[name]["events"]
                points.append(point)
                report(point)
    finally:
        if args.keep:
            node.terminate(30)
            shutil.rmtree(Path(args.keep) / mode, ignore_errors=True)
            shutil.move(str(node.data_dir), str(Path(args.keep) / mode))
        node.stop()
    return points


def describe(point: Point) -> str:
    cases = "".join(f"\n  {name}: {c['eventsPerSecond']:,.0f} ev/s, p50 {c['p50Ms']:.2f} ms, node CPU "
                    f"{c['serverCpuUsPerEvent']} us and {c['bytesWrittenPerEvent']:,} bytes written per event, "
                    f"{c['groupCommit']['eventsPerCommit']} events and {c['groupCommit']['commitMs']} ms of COMMIT "
                    "per group commit"
                    + (f" ({c['errors']} errors)" if c["errors"] else "")
                    for name, c in point.cases.items())
    return (f"{point.mode} ids at {point.events:,} events (fill {point.fill_events_per_s:,.0f} ev/s, "
            f"RSS {point.rss_mb:.0f} MB, data {point.data_dir_mb:,.0f} MB):{cases}")


def ratios(points: list[Point]) -> list[str]:
    by_key = {(p.mode, i): p for mode in ID_MODES for i, p in enumerate([q for q in points if q.mode == mode])}
    lines = []
    for (mode, i), point in sorted(by_key.items(), key=lambda item: item[0][1]):
        if mode == "node" or ("node", i) not in by_key:
            continue
        node = by_key[("node", i)]
        parts = [f"{name} {point.cases[name]['eventsPerSecond'] / node.cases[name]['eventsPerSecond']:.2f}x"
                 for name in point.cases if node.cases.get(name, {}).get("eventsPerSecond")]
        lines.append(f"{mode}/node at {point.events:,} events: " + ", ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/growth.py", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000",
                        help="log sizes (events) at which the cases run, ascending (default 1000000,10000000)")
    parser.add_argument("--modes", default=",".join(ID_MODES),
                        help=f"id modes, of {','.join(ID_MODES)} (default all)")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per case (default 5)")
    parser.add_argument("--event-size", type=int, default=100, help="bytes of each event's data (default 100)")
    parser.add_argument("--fill-batch", type=int, default=1000, help="events per fill request (default 1000)")
    parser.add_argument("--fill-concurrency", type=int, default=4)
    parser.add_argument("--keep", metavar="DIR", help="keep each mode's data directory as DIR/MODE")
    parser.add_argument("--data-from", metavar="DIR",
                        help="start each mode from a copy of DIR/MODE (left by --keep) instead of an empty log")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    args.cases = [c for c in args.cases.split(",") if c]
    for name in args.cases:
        parse_case(name)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ID_MODES for m in modes):
        parser.error(f"--modes takes {','.join(ID_MODES)}")

    def report(point: Point) -> None:
        print(describe(point), file=sys.stderr if args.json else sys.stdout, flush=True)

    points: list[Point] = []
    restore_sigterm = _interrupt_on_sigterm()  # a SIGTERM stops the node too
    try:
        for mode in modes:
            points += asyncio.run(run_mode(mode, args, report))
    finally:
        restore_sigterm()
    lines = ratios(points)
    if args.json:
        print(json.dumps({"points": [p.to_dict() for p in points], "ratios": lines}, indent=2))
    else:
        for line in lines:
            print(line)
    return 0
