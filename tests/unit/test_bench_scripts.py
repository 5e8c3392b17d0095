"""The scripts in bench/ run as `python bench/NAME.py`, which puts bench/ first on sys.path, where
bench/eventsourcing.py would shadow the eventsourcing library (and the reference runs would be skipped)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
WRAPPERS = ["append.py", "mixed.py", "cluster.py", "subscribe.py", "eventsourcing.py", "growth.py"]


@pytest.mark.parametrize("script", WRAPPERS)
def test_a_bench_script_imports_the_eventsourcing_library_not_its_neighbour(script):
    probe = ("import runpy, sys; sys.argv = [sys.argv[0], '--help']\n"
             "try:\n"
             f"    runpy.run_path({str(BENCH / script)!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "import eventsourcing.sqlite; print(eventsourcing.__file__)\n")
    # run the script as Python would: its directory first on sys.path
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCH)!r})\n" + probe],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "site-packages" in done.stdout.splitlines()[-1]


def test_the_instruction_count_loops_run():
    """bench/append_instructions.py's measured loops, once each, without valgrind (which CI need not have)."""
    for part in ("api", "ids", "seal", "log", "logids"):
        done = subprocess.run([sys.executable, str(BENCH / "append_instructions.py"), "--inner", part, "2"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]


def test_the_growth_benchmark_measures_every_id_mode(tmp_path):
    """bench/growth.py on a small log: a node per id mode, filled and measured at each size, ratios at the end."""
    done = subprocess.run([sys.executable, str(BENCH / "growth.py"), "--sizes", "1000,3000", "--fill-batch", "500",
                           "--duration", "0.3", "--cases", "append_b1_c1,append_b10_c4", "--json"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert [(p["mode"], p["events"] >= size) for p, size in zip(report["points"], [1000, 3000] * 3)] == [
        ("node", True), ("node", True), ("client", True), ("client", True), ("client-v7", True), ("client-v7", True)]
    for point in report["points"]:
        for case in point["cases"].values():
            assert case["events"] > 0 and case["errors"] == 0 and case["bytesWrittenPerEvent"] > 0
    assert [line.split(" at ")[0] for line in report["ratios"]] == ["client/node", "client-v7/node"] * 2


def test_the_growth_benchmark_sends_the_ids_of_its_mode():
    """node: no ids; client: random version-4 UUIDs; client-v7: time-ordered version-7 ones, all different."""
    import uuid
    from evstore.client.bench.growth import Bodies
    for mode, version in (("node", None), ("client", 4), ("client-v7", 7)):
        events = json.loads(Bodies(data=b'{"n":1}', mode=mode).body(50))["events"]
        ids = [event.get("id") for event in events]
        if version is None:
            assert ids == [None] * 50
        else:
            assert {uuid.UUID(text).version for text in ids} == {version} and len(set(ids)) == 50


def test_the_id_merge_measurement_runs_on_a_copy_of_a_log(tmp_path):
    """bench/id_merge.py on a small log a node wrote: both designs measured for each batch size, the data
    directory left as it was."""
    import asyncio
    import uuid
    from evstore.node.log import Log, NewEvent
    from evstore.node.storage import Storage

    async def fill() -> None:
        storage = Storage(tmp_path / "data")
        storage.open()
        try:
            await Log(storage).append("s", "any", [NewEvent(uuid.uuid4().bytes, "T", b"{}", b"{}")
                                                   for _ in range(2000)])
        finally:
            storage.close()

    asyncio.run(fill())
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    done = subprocess.run([sys.executable, str(BENCH / "id_merge.py"), str(tmp_path / "data"), "--batches", "10,500"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    import re
    expected = [r"one-table: built a table of the log's 2,000 ids in [\d.]+ s",
                r"one-table: merge of 10 sorted random ids: .* us per id\)",
                r"one-table: merge of 500 sorted random ids: .* us per id\)",
                r"runs: opened the index in [\d.]+ s; the log's runs by level: \{\}",
                *(rf"runs: 4 windows of {size} random ids, {kind} slices: .* us per id\)"
                  for size in (10, 500) for kind in ("window", "runs"))]
    lines = done.stdout.splitlines()
    assert len(lines) == len(expected) and all(re.fullmatch(e, line) for e, line in zip(expected, lines)), lines
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_the_id_index_layouts_are_measured_in_a_temporary_directory():
    """bench/id_index_layouts.py on a tiny log: each layout built and appended to, then the LSM parts."""
    done = subprocess.run([sys.executable, str(BENCH / "id_index_layouts.py"), "--events", "2000", "--groups", "2",
                           "--group", "200", "--merges", "300"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert [line.split(":")[0] for line in lines] == [
        "sequential", "sequential", "random", "random", "random-unsynced-file", "random-unsynced-file",
        "on an id table of 2,400 ids", "probe for fresh ids, 500 per SELECT", "merge a sorted batch of 300 ids"]
    assert all("rows/s" in line for line in lines[1:6:2])


def test_the_append_path_is_stamped_step_by_step():
    """bench/append_path.py on a node of its own: every request's steps found, in order, each gap measured."""
    done = subprocess.run([sys.executable, str(BENCH / "append_path.py"), "--requests", "60"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("single-event appends at concurrency 1, durability sync, 48 of 48 requests"), lines
    assert [line.split("  ")[1].strip().split(" -> ")[0] for line in lines[1:-1]] == ["sent", *(
        "read handler queued commit_starts ops_done commit_done settled resumed replying").split()]
    assert lines[-1].split()[0] == "total"


def test_the_wal_sync_measurement_runs_both_files(tmp_path):
    """bench/wal_sync.py, tiny: a growing and a zero-filled file each measured, and removed afterwards."""
    done = subprocess.run([sys.executable, str(BENCH / "wal_sync.py"), "--dir", str(tmp_path), "--commits", "20",
                           "--rounds", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["growing", "zero-filled"], lines
    assert list(tmp_path.iterdir()) == []
