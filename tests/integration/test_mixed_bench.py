"""The mixed (cqrs-read-model) benchmark runs end to end against a node and a PostgreSQL server it starts itself
(tiny --quick run, no timing asserts): both systems report every operation, with the read share held."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from evstore.client.bench.mixed import main


def test_quick_mixed_bench_reports_both_systems(capsys):
    assert main(["--quick", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference"].startswith("server_version=") and "fsync=on" in report["reference"]
    for system in ("evstore", "eventsourcing"):
        result = report[system]
        reads, writes = result["read"], result["write"]
        assert reads["ops"] > 0 and writes["ops"] > 0 and reads["errors"] == writes["errors"] == 0, (system, result)
        assert writes["ops"] <= 0.15 * (reads["ops"] + writes["ops"]) + 1, (system, result)  # 85 % are reads
        for op in (reads, writes):
            assert 0 < op["p50Ms"] <= op["p99Ms"] <= op["p99.9Ms"], (system, result)
        assert result["serverCpuUsPerOp"] > 0 and result["clientCpuUsPerOp"] > 0, (system, result)



def _bench_servers() -> set[str]:
    """PIDs of PostgreSQL servers the benchmarks started (their data dirs are named evstore-bench-pg-*)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"evstore-bench-pg-" in cmdline.read():
                    found.add(pid)
        except OSError:
            continue
    return found


def test_mixed_bench_leaves_no_server_or_temp_dir_behind(capsys):
    # the server runs as user postgres, who cannot enter pytest's private tmp_path: watch the shared temp dir
    servers, dirs = _bench_servers(), set(Path(tempfile.gettempdir()).glob("evstore-bench-*"))
    assert main(["--quick", "--json"]) == 0
    assert _bench_servers() <= servers
    assert set(Path(tempfile.gettempdir()).glob("evstore-bench-*")) <= dirs
