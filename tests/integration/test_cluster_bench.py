"""The cluster benchmark runs end to end (one standalone node, a 3-node cluster with a real etcd, one leader
kill) in --quick mode and reports every case, the ratios and the failover time (no timing asserts)."""
from __future__ import annotations

import json
import shutil
import tempfile

import pytest

from evstore.client.bench.append import APPEND_BATCHES, CONCURRENCIES
from evstore.client.bench.cluster import main

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed")

EXPECTED_CASES = sorted(f"append_b{b}_c{c}" for b in APPEND_BATCHES for c in CONCURRENCIES)
TARGETS = ("single", "leader", "follower")


def test_quick_cluster_bench_reports_cases_ratios_and_failover(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # every data dir it makes lands here
    assert main(["--quick", "--json", "--kills", "1"]) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["errors"] == 0
    assert report["settings"]["nodes"] == 3 and report["settings"]["leaseTtl"] == 5
    for target in TARGETS:
        cases = {c["case"]: c for c in report[target]}
        assert sorted(cases) == EXPECTED_CASES, target
        for name, case in cases.items():
            assert case["errors"] == 0, (target, name, case["firstError"])
            assert case["requests"] > 0 and case["events"] == case["requests"] * case["batch"], (target, name)
            assert case["eventsPerSecond"] > 0 and 0 < case["p50Ms"] <= case["p99Ms"], (target, name)
    for target in ("leader", "follower"):
        assert sorted(report["ratio"][target]) == EXPECTED_CASES
        assert all(value > 0 for value in report["ratio"][target].values()), target

    failover = report["failover"]
    assert failover["leaseTtl"] == 5 and len(failover["kills"]) == 1
    kill = failover["kills"][0]
    assert kill["failoverSeconds"] > 0 and kill["rejoinSeconds"] > 0
    assert kill["newLeader"] != kill["killed"] and kill["epochAfter"] > kill["epochBefore"]
    assert failover["seconds"]["min"] == failover["seconds"]["max"] == kill["failoverSeconds"]
    assert failover["acknowledged"] > 0 and failover["check"]["ok"], failover["check"]["problems"]

    assert list(tmp_path.iterdir()) == []  # nodes stopped, data dirs removed
