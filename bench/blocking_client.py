"""Per-call cost of the blocking client on a node of its own: a request handed to the client's loop thread
(the path before client/blocking.py) against one sent from the calling thread (now), alternated twice.

    python bench/blocking_client.py [--durability sync|interval] [--calls N]

Prints the p50 latency and the client process's CPU per call of `info()`, a one-event `append` and a
five-event `read_stream`, for each path and round.
"""
from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

from evstore.client import EvstoreClient
from evstore.client.harness.localnode import free_port

ROUNDS = 2
WARM_UP = 50


def wait_until_live(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/health/live")
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def measure(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """p50 latency and client CPU per call, in seconds."""
    for _ in range(WARM_UP):
        call()
    latencies = []
    cpu_start = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies), (time.process_time() - cpu_start) / calls


def calls_of(client: EvstoreClient) -> dict[str, dict[str, Callable[[], object]]]:
    event = [{"type": "Measured", "data": {"n": 1}}]
    through_loop = client._run  # the path before: the async client's coroutine, run on the loop thread
    return {
        "loop thread (before)": {
            "info": lambda: through_loop(client.async_client.info()),
            "append 1": lambda: through_loop(client.async_client.append("before", event)),
            "read 5": lambda: through_loop(client.async_client.read_stream("before", limit=5)),
        },
        "calling thread (now)": {
            "info": lambda: client.info(),
            "append 1": lambda: client.append("now", event),
            "read 5": lambda: client.read_stream("now", limit=5),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--durability", choices=("sync", "interval"), default="sync")
    parser.add_argument("--calls", type=int, default=1000)
    options = parser.parse_args(argv)
    data = tempfile.mkdtemp(prefix="evstore-bench-")
    port = free_port()
    node = subprocess.Popen([sys.executable, "-m", "evstore.node", "--data-dir", data, "--port", str(port),
                             "--durability", options.durability, "--log-level", "warning"])
    try:
        wait_until_live(port)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        with EvstoreClient(f"http://127.0.0.1:{port}") as client:
            paths = calls_of(client)
            for _ in range(ROUNDS):
                for path, calls in paths.items():
                    for name, call in calls.items():
                        results.setdefault((name, path), []).append(measure(call, options.calls))
        for (name, path), runs in sorted(results.items()):
            figures = "  ".join(f"p50 {p50 * 1e6:6.0f} us, client CPU {cpu * 1e6:5.0f} us" for p50, cpu in runs)
            print(f"{options.durability:8s} {name:9s} {path:21s} {figures}")
    finally:
        node.terminate()
        node.wait(10)
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
