"""The benchmarks' CPU meter resolves less than a clock tick: a short quick run of cheap operations (the mixed
benchmark's PostgreSQL backends under load) read as 0 CPU with /proc/<pid>/stat's 10 ms ticks."""
from __future__ import annotations

import os
import time

from evstore.client.bench.append import process_cpu


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_millisecond_of_cpu_shows():
    for _ in range(5):
        before = process_cpu(os.getpid())
        burn(0.001)
        assert process_cpu(os.getpid()) - before >= 0.0009
