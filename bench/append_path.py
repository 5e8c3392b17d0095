"""Where the time of one single-event append goes at concurrency 1 (issue 12 point 6): a node started with time
stamps at each step of the path (the clock is CLOCK_MONOTONIC, shared with this client), then the median gap
between consecutive steps over the requests.

    python bench/append_path.py [--requests 1500] [--durability sync|interval]

The steps: the client sends; the node's event loop reads the request (aiohttp's `data_received`), the route's
handler starts, the append is queued for the writer thread, the writer starts its group commit, its operations
are done and COMMIT starts (with `durability sync`: its fdatasync), the group commit is done, the event loop
settles the append's future, the handler resumes, aiohttp writes the reply, the client has it. A diagnostic, not a
benchmark: the stamps cost a few us each.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# this file's directory comes first on sys.path, and its scripts' names must not shadow a module the node imports
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

STEPS = ["read", "handler", "queued", "commit_starts", "ops_done", "commit_done", "settled", "resumed", "replying"]


def node_side(stamps_path: str, node_args: list[str]) -> None:
    """Run a node in this process with its steps stamped, written to `stamps_path` at exit."""
    import atexit
    import runpy
    import signal

    import aiohttp.web_protocol as web_protocol

    from evstore.node.api import streams
    from evstore.node.storage import threads

    stamps: list[tuple[str, int]] = []
    now = time.perf_counter_ns

    def wrap(owner, name, before=None, after=None, coroutine=False):
        original = getattr(owner, name)
        if coroutine:
            async def wrapped(*args, **kwargs):
                if before:
                    stamps.append((before, now()))
                result = await original(*args, **kwargs)
                if after:
                    stamps.append((after, now()))
                return result
        else:
            def wrapped(*args, **kwargs):
                if before:
                    stamps.append((before, now()))
                result = original(*args, **kwargs)
                if after:
                    stamps.append((after, now()))
                return result
        setattr(owner, name, wrapped)

    wrap(web_protocol.RequestHandler, "data_received", before="read")
    wrap(streams, "append", before="handler", coroutine=True)
    wrap(threads.Storage, "write", before="queued", after="resumed", coroutine=True)
    wrap(threads.Storage, "_run_batch", before="commit_starts", after="commit_done")
    wrap(threads.Storage, "_run_ops", after="ops_done")
    wrap(threads, "_settle_all", before="settled")
    # (its end is no step: it comes after the client may have the reply)
    wrap(web_protocol.RequestHandler, "finish_response", before="replying", coroutine=True)

    def dump() -> None:
        Path(stamps_path).write_text("".join(f"{step} {at}\n" for step, at in stamps))

    atexit.register(dump)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.argv = ["evstore.node", *node_args]
    runpy.run_module("evstore.node", run_name="__main__")


def gaps(stamps: list[tuple[str, int]], requests: list[tuple[int, int]]) -> dict[str, list[int]]:
    """Per request (serial: each one's steps lie between its send and its reply), the gap before each step."""
    found: dict[str, list[int]] = {}
    at = 0
    for sent, replied in requests:
        steps: dict[str, int] = {}
        while at < len(stamps) and stamps[at][1] <= replied:
            step, when = stamps[at]
            if when >= sent and step not in steps:
                steps[step] = when
            at += 1
        if len(steps) != len(STEPS):
            continue
        before, name = sent, "sent"
        for step in STEPS:
            found.setdefault(f"{name} -> {step}", []).append(steps[step] - before)
            before, name = steps[step], step
        found.setdefault(f"{name} -> client has the reply", []).append(replied - before)
        found.setdefault("total", []).append(replied - sent)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/append_path.py", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--durability", choices=("sync", "interval"), default="sync")
    parser.add_argument("--node-side", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.node_side is not None:
        node_side(args.node_side[0], args.node_side[1:])
        return 0
    from evstore.client.harness.localnode import free_port
    with tempfile.TemporaryDirectory(prefix="evstore-append-path-") as work:
        port = free_port()
        stamps_path = Path(work) / "stamps.txt"
        node = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--node-side", str(stamps_path),
                                 "--host", "127.0.0.1", "--port", str(port), "--data-dir", f"{work}/data",
                                 "--log-level", "warning", "--durability", args.durability],
                                env={k: v for k, v in os.environ.items() if not k.startswith("EVSTORE_")})
        try:
            conn = _connect(port, node)
            body = json.dumps({"events": [{"type": "BenchEvent", "data": {"p": "x" * 92}}]}).encode()
            requests = []
            for i in range(args.requests):
                sent = time.perf_counter_ns()
                conn.request("POST", f"/v1/streams/path-{i}", body, {"Content-Type": "application/json"})
                reply = conn.getresponse()
                reply.read()
                requests.append((sent, time.perf_counter_ns()))
                if reply.status != 200:
                    raise SystemExit(f"append answered {reply.status}")
            conn.close()
            node.terminate()
            node.wait(30)
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
        stamps = [(step, int(at)) for step, at in (line.split() for line in stamps_path.read_text().splitlines())]
    warm = requests[len(requests) // 5:]  # the first fifth warms the node up
    found = gaps(stamps, warm)
    print(f"single-event appends at concurrency 1, durability {args.durability}, {len(found.get('total', []))} "
          f"of {len(warm)} requests with every step (median, mean in us):")
    for name, values in found.items():
        print(f"  {name:40s} {statistics.median(values) / 1000:8.1f} {statistics.mean(values) / 1000:8.1f}")
    return 0


def _connect(port: int, node: subprocess.Popen) -> http.client.HTTPConnection:
    deadline = time.monotonic() + 30
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/health/ready")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return conn
        except OSError:
            pass
        conn.close()
        if node.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the node did not start")
        time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
