"""The alert rules in charts/evstore-operator/rules/evstore.rules.yaml.

Proves: `promtool check rules` accepts the file; `promtool test rules` (evstore.rules.test.yaml) shows the
no-leader, ISR-below-minInSync, checksum, 5xx-ratio (forwarded and internal requests left out) and
operator alerts firing on their failure and quiet otherwise; every alert the issue lists exists, is per
store, and carries a summary, description and runbook; every metric the rules use is exported.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[1] / "charts" / "evstore-operator" / "rules" / "evstore.rules.yaml"
ISSUE_ALERTS = {"EvstoreNoLeader", "EvstoreInSyncBelowMinimum", "EvstoreReplicaOutOfSync", "EvstoreReplicationLag",
                "EvstoreHighErrorRatio", "EvstoreChecksumFailure", "EvstoreDiskAlmostFull", "EvstoreFsyncSlow",
                "EvstoreEtcdUnreachable", "EvstoreFrequentElections", "EvstoreSubscriptionLagGrowing",
                "EvstoreSubscriptionParkedGrowing", "EvstoreOperatorReconcileErrors"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not installed (make prometheus: Debian package prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_operator_narrows_the_store_alerts_to_each_store(tmp_path):
    """spec.monitoring.serviceMonitor: the operator's PrometheusRule for a store holds the store alerts,
    selecting that store only, and promtool accepts it."""
    from evstore.operator import manifests
    from evstore.operator.spec import parse_spec

    rules = yaml.safe_load(RULES.read_text())
    spec = parse_spec("orders", "shop", {"monitoring": {"serviceMonitor": True}})
    kinds = [c["kind"] for c in manifests.desired_children(spec, alert_rules=rules)]
    assert kinds.count("PrometheusRule") == 1 and "PrometheusRule" not in [
        c["kind"] for c in manifests.desired_children(parse_spec("orders", "shop", {}), alert_rules=rules)]
    rule = manifests.prometheus_rule(spec, rules)
    (group,) = rule["spec"]["groups"]
    store_alerts = {r["alert"] for r in alert_rules() if not r["alert"].startswith("EvstoreOperator")}
    assert {r["alert"] for r in group["rules"]} == store_alerts >= ISSUE_ALERTS - {"EvstoreOperatorReconcileErrors"}
    for r in group["rules"]:
        assert ".+-peers" not in r["expr"] and 'namespace="shop", job="orders-peers"' in r["expr"], r["alert"]
    narrowed = tmp_path / "orders.rules.yaml"
    narrowed.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([promtool(), "check", "rules", str(narrowed)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules_accepts_the_file():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = subprocess.run([promtool(), "test", "rules", "evstore.rules.test.yaml"], capture_output=True,
                            text=True, timeout=60, cwd=HERE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_the_issue_lists_has_runbook_text_and_is_per_store():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert ISSUE_ALERTS <= set(rules)
    for name, rule in rules.items():
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"] and len(notes["runbook"]) > 80, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        if not name.startswith("EvstoreOperator"):
            assert 'job=~".+-peers"' in rule["expr"], name
            # aggregations keep the store (namespace, job); a plain comparison keeps every label anyway
            assert all("namespace, job" in by for by in re.findall(r"by \(([^)]*)\)", rule["expr"])), name


def test_rules_use_only_exported_metrics():
    spec = importlib.util.spec_from_file_location("dashboard_checks", HERE.parent / "unit" / "test_dashboards.py")
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    from evstore.node.metrics import NodeMetrics
    from evstore.operator.metrics import OperatorMetrics

    known = checks.exported_names(NodeMetrics().registry) | checks.exported_names(OperatorMetrics().registry)
    for rule in alert_rules():
        unknown = checks.metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']} uses {sorted(unknown)}"
