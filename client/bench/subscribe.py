"""`evstore bench --subscriptions` (also `bench/subscribe.py`): subscriptions of a node against its own reads.

Four cases, each against targets of issue 9 on a 2-core machine:
- catch-up: a log of `--events` events (default 1,000,000) read once by paging `$all` (limit 4096, one
  client) and once through one SSE subscription from the start until `caughtUp`; the ratio of the two rates
  (target >= 0.8).
- live: `--live-subscribers` SSE subscribers (default 100) following the end while single-event appends
  arrive at `--live-rate` events/s (default 1,000) for `--live-seconds` (rate x seconds appends in all); the
  latency of each delivery is from the append's acknowledgement to the event's arrival at a subscriber
  (target p99 < 10 ms). Subscribers run in worker processes of their own, so the load generator's parsing
  does not queue behind the appender.
- idle: `--idle-subscribers` SSE subscribers (default 1,000) connected and idle; the node's RSS before and
  after (target < 100 MB more).
- persistent: one persistent subscription (bufferSize 100) over `--persistent-events` events (default
  200,000), drained by 4 WebSocket consumers that ack each batch as it arrives (target >= 10,000 acked
  events/s).
Only 127.0.0.1 is contacted; the node is started by the benchmark (its data in a temp dir) unless `--url`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import sys
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass, field

import aiohttp
import orjson

from .append import LocalNode, percentile, process_memory

TARGETS = {"catchup_ratio": 0.8, "live_p99_ms": 10.0, "idle_rss_mb": 100.0, "persistent_acked_per_s": 10_000}
FILL_BATCH = 1000
FILL_CONCURRENCY = 4
READ_PAGE = 4096
EVENT_DATA = {"amount": 42, "currency": "EUR", "note": "x" * 40}
CONNECT_TIMEOUT = 60.0
DRAIN_TIMEOUT = 600.0


@dataclass
class Results:
    events: int = 0
    paging_events_per_s: float = 0.0
    catchup_events_per_s: float = 0.0
    catchup_ratio: float = 0.0
    live_subscribers: int = 0
    live_rate: int = 0
    live_deliveries: int = 0
    live_missing: int = 0
    live_p50_ms: float = 0.0
    live_p99_ms: float = 0.0
    live_max_ms: float = 0.0
    idle_subscribers: int = 0
    idle_rss_before_mb: float = 0.0
    idle_rss_after_mb: float = 0.0
    idle_rss_mb: float = 0.0
    persistent_events: int = 0
    persistent_acked_per_s: float = 0.0
    checks: dict = field(default_factory=dict)


# -- filling the log ---------------------------------------------------------------------------------------

def _append_body(count: int) -> bytes:
    return orjson.dumps({"events": [{"id": str(uuid.uuid4()), "type": "BenchEvent", "data": EVENT_DATA}
                                    for _ in range(count)]})


async def fill(url: str, events: int, prefix: str) -> None:
    """`events` events in batches of FILL_BATCH over FILL_CONCURRENCY streams."""
    remaining = [events]

    async def writer(session: aiohttp.ClientSession, n: int) -> None:
        while remaining[0] > 0:
            count = min(FILL_BATCH, remaining[0])
            remaining[0] -= count
            async with session.post(f"{url}/v1/streams/{prefix}-{n}", data=_append_body(count),
                                    headers={"Content-Type": "application/json"}) as response:
                if response.status != 200:
                    raise RuntimeError(f"fill append answered {response.status}: {await response.text()}")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(writer(session, n) for n in range(FILL_CONCURRENCY)))


async def head(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/v1/all", params={"direction": "backward", "limit": "1"}) as response:
        return (await response.json())["head"]


# -- catch-up ---------------------------------------------------------------------------------------------

async def page_all(url: str) -> tuple[int, float]:
    """Every event of `$all`, page after page: (events, seconds)."""
    count, position = 0, 1
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while position is not None:
            async with session.get(f"{url}/v1/all", params={"from": str(position), "limit": str(READ_PAGE)}) as r:
                page = orjson.loads(await r.read())
            count += len(page["events"])
            position = page["next"]
    return count, time.perf_counter() - started


class SSEFrames:
    """Splits an SSE byte stream into messages without decoding them (the load generator stays cheap)."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        frames = (self._carry + chunk).split(b"\n\n")
        self._carry = frames.pop()
        return frames


def frame_position(frame: bytes) -> int | None:
    """The `id:` of an event message; None for other messages."""
    if b'data: {"event"' not in frame:
        return None
    start = frame.index(b"id: ") + 4
    return int(frame[start:frame.index(b"\n", start)])


async def catch_up(url: str) -> tuple[int, float]:
    """One SSE subscription from the start until caughtUp: (events, seconds)."""
    count = 0
    frames = SSEFrames()
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(f"{url}/v1/subscribe", params={"start": "start"},
                               headers={"Accept": "text/event-stream"}) as response:
            async for chunk in response.content.iter_any():
                for frame in frames.feed(chunk):
                    if b'data: {"event"' in frame:
                        count += 1
                    elif b'"caughtUp"' in frame:
                        return count, time.perf_counter() - started
    raise RuntimeError("the subscription ended before it caught up")


# -- live delivery ----------------------------------------------------------------------------------------

class _FollowingEnd(asyncio.Protocol):
    """One SSE subscriber following the end over a bare connection: per arrival it notes only the time and the
    positions it completed, so that one load-generator core keeps up with many subscribers."""

    def __init__(self, request: bytes, arrivals: list, connected: asyncio.Future) -> None:
        self._request = request
        self._arrivals = arrivals
        self._connected = connected
        self._buffer = b""
        self._in_body = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self._buffer + data
        if not self._in_body:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 200"):
                self._connected.set_exception(RuntimeError(buffer[:200].decode(errors="replace")))
                return
            self._in_body = True
            buffer = buffer[end + 4:]
            if not self._connected.done():
                self._connected.set_result(None)
        complete = buffer.rfind(b"\n\n")
        if complete < 0:
            self._buffer = buffer
            return
        self._buffer = buffer[complete + 2:]
        for match in _EVENT_ID.finditer(buffer, 0, complete + 2):
            self._arrivals.append((int(match.group(1)), now))

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._connected.done():
            self._connected.set_exception(RuntimeError(f"connection lost: {exc}"))


_EVENT_ID = re.compile(rb'id: (\d+)\ndata: \{"event"')


def _live_worker(url: str, subscribers: int, ready, stop, out) -> None:
    """A process of SSE subscribers following the end: sends back, per subscriber, (position, arrival) pairs
    (time.monotonic is the machine's CLOCK_MONOTONIC, comparable across processes)."""
    parts = urllib.parse.urlsplit(url)
    request = (f"GET /v1/subscribe?start=end HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        arrivals = [[] for _ in range(subscribers)]
        transports, waits = [], []
        for i in range(subscribers):
            connected = loop.create_future()
            transport, _protocol = await loop.create_connection(
                lambda i=i, connected=connected: _FollowingEnd(request, arrivals[i], connected),
                parts.hostname, parts.port)
            transports.append(transport)
            waits.append(connected)
        await asyncio.wait_for(asyncio.gather(*waits), CONNECT_TIMEOUT)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)  # the parent's stop flag lives in another process: polled
        for transport in transports:
            transport.close()
        out.put(arrivals)

    asyncio.run(run())


async def live(url: str, subscribers: int, rate: int, seconds: float, workers: int = 2) -> dict:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    queue = context.Queue()
    readies, processes = [], []
    for n in range(workers):
        share = subscribers // workers + (1 if n < subscribers % workers else 0)
        ready = context.Event()
        process = context.Process(target=_live_worker, args=(url, share, ready, stop, queue), daemon=True)
        process.start()
        readies.append(ready)
        processes.append(process)
    try:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        for ready in readies:
            if not await asyncio.to_thread(ready.wait, max(0.0, deadline - time.monotonic())):
                raise RuntimeError("the live subscribers did not connect in time")
        acknowledged: dict[int, float] = {}
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def one(n: int) -> None:
                async with session.post(f"{url}/v1/streams/live-{n % 16}", data=_append_body(1),
                                        headers={"Content-Type": "application/json"}) as response:
                    now = time.monotonic()
                    acknowledged[(await response.json())["position"]] = now

            started = time.monotonic()
            pending: set[asyncio.Task] = set()
            n, total = 0, max(1, round(rate * seconds))  # a fixed count: a busy machine paces it slower
            while n < total:
                for _ in range(min(per_tick, total - n)):
                    task = asyncio.create_task(one(n))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    n += 1
                next_tick = started + (n // per_tick) * tick
                await asyncio.sleep(max(0.0, next_tick - time.monotonic()))  # pacing of the offered load
            await asyncio.gather(*pending)
        await asyncio.sleep(0.5)  # deliveries still on the wire reach the subscribers
    finally:
        stop.set()
    arrivals = []
    for _ in processes:
        arrivals.extend(await asyncio.to_thread(queue.get, True, 60))
    for process in processes:
        process.join(10)
    latencies, missing = [], 0
    for per_subscriber in arrivals:
        seen = {}
        for position, arrived in per_subscriber:
            seen[position] = arrived
        for position, acked in acknowledged.items():
            if position in seen:
                latencies.append(max(0.0, seen[position] - acked))
            else:
                missing += 1
    latencies.sort()
    return {"deliveries": len(latencies), "missing": missing, "p50_ms": percentile(latencies, 0.50) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "max_ms": (latencies[-1] * 1000) if latencies else 0.0}


# -- idle subscribers -------------------------------------------------------------------------------------

async def idle(url: str, pid: int | None, subscribers: int) -> tuple[float, float]:
    """Node RSS (MB) before and after `subscribers` idle SSE subscribers connected."""
    before = process_memory(pid)["rssMb"] if pid else 0.0
    connected = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        responses = []

        async def connect() -> None:
            nonlocal connected
            response = await session.get(f"{url}/v1/subscribe", params={"start": "end"},
                                         headers={"Accept": "text/event-stream"})
            if response.status != 200:
                raise RuntimeError(f"subscribe answered {response.status}: {await response.text()}")
            responses.append(response)
            connected += 1

        for offset in range(0, subscribers, 100):
            await asyncio.gather(*(connect() for _ in range(min(100, subscribers - offset))))
        await asyncio.sleep(1.0)  # let the node settle its buffers before measuring
        after = process_memory(pid)["rssMb"] if pid else 0.0
        for response in responses:
            response.close()
        await wait_subscribers_gone(session, url)
    return before, after


async def wait_subscribers_gone(session: aiohttp.ClientSession, url: str) -> None:
    """Until the node has noticed every closed subscriber (it counts them against --max-subscribers)."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while time.monotonic() < deadline:
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
        if any(line.split()[-1] in ("0", "0.0") for line in text.splitlines()
               if line.startswith("evstore_subscribers ")):
            return
        await asyncio.sleep(0.1)  # the node's count lives in another process: polled
    raise RuntimeError("the node still counts the closed idle subscribers")


# -- persistent subscription ------------------------------------------------------------------------------

async def persistent(url: str, events: int, consumers: int = 4) -> float:
    """Acked events/s of one persistent subscription over `events` already stored, drained by `consumers`."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{url}/v1/subscriptions/{name}",
                               json={"filter": {"streamPrefix": "persist-"}, "startFrom": "start",
                                     "bufferSize": 100, "concurrencyLimit": consumers}) as response:
            if response.status not in (200, 201):
                raise RuntimeError(f"creating the subscription answered {response.status}: {await response.text()}")
        acked = [0]
        done = asyncio.Event()
        started = [0.0]

        async def consume() -> None:
            async with session.ws_connect(f"{url}/v1/subscriptions/{name}/connect") as ws:
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    body = orjson.loads(message.data)
                    batch = body.get("events")
                    if not batch:
                        continue
                    if not started[0]:
                        started[0] = time.perf_counter()
                    await ws.send_str(orjson.dumps({"ack": [d["deliveryId"] for d in batch]}).decode())
                    acked[0] += len(batch)
                    if acked[0] >= events:
                        done.set()
                        return

        tasks = [asyncio.create_task(consume()) for _ in range(consumers)]
        try:
            await asyncio.wait_for(done.wait(), DRAIN_TIMEOUT)
            seconds = time.perf_counter() - started[0]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:  # a slow delete must not lose the measurement; it is reported
                async with session.delete(f"{url}/v1/subscriptions/{name}", timeout=aiohttp.ClientTimeout(total=30)):
                    pass
            except asyncio.TimeoutError:
                print(f"warning: deleting the subscription {name} did not answer within 30 s", file=sys.stderr)
    return events / seconds


# -- running ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="evstore bench --subscriptions", description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="an existing node (default: start one with data in a temp dir)")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the catch-up log")
    parser.add_argument("--live-subscribers", type=int, default=100)
    parser.add_argument("--live-rate", type=int, default=1000, help="events appended per second")
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--idle-subscribers", type=int, default=1000)
    parser.add_argument("--persistent-events", type=int, default=200_000)
    parser.add_argument("--cases", default="catchup,live,idle,persistent", help="comma-separated")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return parser.parse_args(argv)


async def run(opts: argparse.Namespace, url: str, pid: int | None) -> Results:
    cases = set(opts.cases.split(","))
    results = Results()
    say = (lambda *a: print(*a, file=sys.stderr)) if opts.json else print
    if "idle" in cases:  # first: the other cases leave buffers and caches behind
        results.idle_subscribers = opts.idle_subscribers
        before, after = await idle(url, pid, opts.idle_subscribers)
        results.idle_rss_before_mb, results.idle_rss_after_mb = before, after
        results.idle_rss_mb = after - before
        say(f"idle: {opts.idle_subscribers} subscribers, node RSS {before:.1f} -> {after:.1f} MB "
            f"(+{after - before:.1f} MB)")
    # live next, before the large fill: the fill leaves the node checkpointing its WAL for a while (measured
    # after it, p99 was 9-23 ms instead of 7-8 ms; bench/RESULTS.md)
    if "live" in cases:
        results.live_subscribers, results.live_rate = opts.live_subscribers, opts.live_rate
        found = await live(url, opts.live_subscribers, opts.live_rate, opts.live_seconds)
        results.live_deliveries, results.live_missing = found["deliveries"], found["missing"]
        results.live_p50_ms, results.live_p99_ms, results.live_max_ms = found["p50_ms"], found["p99_ms"], found["max_ms"]
        say(f"live: {opts.live_subscribers} subscribers at {opts.live_rate} ev/s: {found['deliveries']:,} deliveries, "
            f"{found['missing']} missing, p50 {found['p50_ms']:.2f} ms, p99 {found['p99_ms']:.2f} ms, "
            f"max {found['max_ms']:.1f} ms")
    if "catchup" in cases:
        say(f"filling {opts.events:,} events ...")
        await fill(url, opts.events, "catchup")
        paged, paged_seconds = await page_all(url)
        caught, caught_seconds = await catch_up(url)
        results.events = caught
        results.paging_events_per_s = paged / paged_seconds
        results.catchup_events_per_s = caught / caught_seconds
        results.catchup_ratio = results.catchup_events_per_s / results.paging_events_per_s
        say(f"catch-up: paging $all {results.paging_events_per_s:,.0f} ev/s ({paged:,} events), one subscription "
            f"{results.catchup_events_per_s:,.0f} ev/s ({caught:,}): ratio {results.catchup_ratio:.2f}")
    if "persistent" in cases:
        await fill(url, opts.persistent_events, "persist")
        results.persistent_events = opts.persistent_events
        results.persistent_acked_per_s = await persistent(url, opts.persistent_events)
        say(f"persistent: 4 consumers, bufferSize 100: {results.persistent_acked_per_s:,.0f} acked ev/s "
            f"over {opts.persistent_events:,} events")
    results.checks = {
        "catchup_ratio": None if "catchup" not in cases else results.catchup_ratio >= TARGETS["catchup_ratio"],
        "live_p99_ms": None if "live" not in cases else (results.live_p99_ms < TARGETS["live_p99_ms"]
                                                         and results.live_missing == 0),
        "idle_rss_mb": None if "idle" not in cases or not pid else results.idle_rss_mb < TARGETS["idle_rss_mb"],
        "persistent_acked_per_s": None if "persistent" not in cases
        else results.persistent_acked_per_s >= TARGETS["persistent_acked_per_s"],
    }
    for name, ok in results.checks.items():
        if ok is not None:
            say(f"target {name} ({TARGETS[name]}): {'met' if ok else 'MISSED'}")
    return results


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.url:
        results = asyncio.run(run(opts, opts.url.rstrip("/"), None))
    else:
        node = LocalNode([]).start()  # SIGTERM, then SIGKILL, and the temp dir removed, whatever happens
        try:
            results = asyncio.run(run(opts, node.url, node.pid))
        finally:
            node.stop()
    if opts.json:
        print(json.dumps(asdict(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
