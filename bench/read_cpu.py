"""CPU time per event of the node's read path in-process (no HTTP): log read + reply body, as the handlers do.

`python bench/read_cpu.py [--events N] [--rounds R]`: process CPU time (all threads) per event for stream and
`$all` pages of 1,000, and per single-event append; for A/B decisions on a shared machine, where wall-clock
throughput moves with other people's load and CPU time does not.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from evstore.node.api import streams as handlers
from evstore.node.log import AllFilter, Log, NewEvent
from evstore.node.storage import Storage

PAGE = 1000


def _events(n: int, data: bytes) -> list[NewEvent]:
    return [NewEvent(uuid.uuid4().bytes, "BenchEvent", data, b"{}", given_id=False) for _ in range(n)]


async def measure(events: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="evstore-readcpu-") as tmp:
        log = Log(Storage(Path(tmp)))
        await log.open()
        try:
            data = b'{"p":"' + b"x" * 92 + b'"}'
            for _ in range(events // 100):
                await log.append("bench-read", "any", _events(100, data))
            out = {}
            user_events = AllFilter(include_system=False)
            for name, page in (("stream", lambda s: log.read_stream("bench-read", start=s, limit=PAGE, rendered=True)),
                               ("all", lambda s: log.read_all(start=s, limit=PAGE, filters=user_events, rendered=True))):
                shape = handlers.stream_reply if name == "stream" else handlers.all_reply
                cpu = time.process_time()
                wall = time.perf_counter()
                read = 0
                for _ in range(rounds):
                    start = 1
                    while start is not None:
                        result = await page(start)
                        body = shape(result)
                        read += len(result.records)
                        start = result.next
                out[name] = {"cpuUsPerEvent": round((time.process_time() - cpu) / read * 1e6, 3),
                             "wallUsPerEvent": round((time.perf_counter() - wall) / read * 1e6, 3),
                             "events": read, "bodyBytes": len(body)}
            cpu = time.process_time()
            wall = time.perf_counter()
            appends = 2000
            for _ in range(appends):
                await log.append("bench-one", "any", _events(1, data))
            out["append1"] = {"cpuUsPerEvent": round((time.process_time() - cpu) / appends * 1e6, 1),
                              "wallUsPerEvent": round((time.perf_counter() - wall) / appends * 1e6, 1)}
            return out
        finally:
            await log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    ns = parser.parse_args()
    for name, values in asyncio.run(measure(ns.events, ns.rounds)).items():
        print(f"{name:<8} {values}")


if __name__ == "__main__":
    main()
