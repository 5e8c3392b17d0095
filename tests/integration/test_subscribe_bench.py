"""`evstore bench --subscriptions` runs every case against a node of its own and reports each target."""
from __future__ import annotations

import json
import subprocess
import sys


def test_the_subscription_benchmark_runs_every_case_small():
    command = [sys.executable, "-m", "evstore.client.cli", "bench", "--subscriptions", "--json",
               "--events", "3000", "--live-subscribers", "4", "--live-rate", "200", "--live-seconds", "1",
               "--idle-subscribers", "20", "--persistent-events", "500"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["events"] == 3000 + 200 and results["catchup_events_per_s"] > 0  # the live case wrote 200 before
    assert results["live_deliveries"] == 4 * 200 and results["live_missing"] == 0
    assert results["idle_subscribers"] == 20 and results["idle_rss_after_mb"] > 0
    assert results["persistent_events"] == 500 and results["persistent_acked_per_s"] > 0
    assert set(results["checks"]) == {"catchup_ratio", "live_p99_ms", "idle_rss_mb", "persistent_acked_per_s"}
