"""The benchmark runs every case end to end against a node it starts itself (tiny --quick run, no timing asserts)."""
from __future__ import annotations

import json

from evstore.client.bench.append import APPEND_BATCHES, CONCURRENCIES, main

EXPECTED_CASES = [f"append_b{b}_c{c}" for b in APPEND_BATCHES for c in CONCURRENCIES] + \
                 [f"{kind}_b1000_c{c}" for kind in ("read", "readall") for c in CONCURRENCIES]


def test_quick_bench_reports_every_case_for_both_systems(capsys):
    assert main(["--quick", "--json"]) == 0  # the reference: eventsourcing's PostgreSQL recorder, own server
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["reference"].startswith("postgres ") and "fsync=on" in report["settings"]["reference"]

    assert report["errors"] == 0
    for system in ("evstore", "eventsourcing"):
        cases = {c["case"]: c for c in report[system]}
        assert sorted(cases) == sorted(EXPECTED_CASES), system
        for name, case in cases.items():
            assert case["errors"] == 0, (system, name, case["firstError"])
            assert case["requests"] > 0 and case["events"] > 0, (system, name)
            assert case["eventsPerSecond"] > 0 and case["requestsPerSecond"] > 0, (system, name)
            assert 0 < case["p50Ms"] <= case["p99Ms"], (system, name)
            if case["kind"] == "append":
                assert case["events"] == case["requests"] * case["batch"], (system, name)
    for name in EXPECTED_CASES:
        assert report["ratio"][name] > 0, name

    # the node's own group-commit metrics, taken around each append case, count exactly what the case sent
    for case in report["evstore"]:
        if case["kind"] == "append":
            commit = case["groupCommit"]
            assert commit["events"] == case["events"] and commit["requests"] == case["requests"], case["case"]
            assert 1 <= commit["commits"] <= case["requests"]
            assert commit["requestsPerCommit"] >= 1 and commit["eventsPerCommit"] >= case["batch"]
    assert set(report["targets"]) >= {"appendEventsPerSecondBatch100", "appendRequestsPerSecondBatch1Concurrency64",
                                      "p99MsBatch1Concurrency64"}


def test_bench_leaves_no_node_or_temp_dir_behind(tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["--quick", "--json", "--no-reference"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["eventsourcing"] == [] and report["evstore"]
    assert list(tmp_path.iterdir()) == []


def test_cases_runs_only_the_named_cases(capsys):
    assert main(["--quick", "--json", "--no-reference", "--cases", "append_b1_c64,read_b1000_c1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["case"] for c in report["evstore"]] == ["append_b1_c64", "read_b1000_c1"]


def test_an_unknown_case_is_a_usage_error(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["--cases", "append_b7_c64"])
    assert exit_info.value.code == 2
    assert "unknown case append_b7_c64" in capsys.readouterr().err
