"""Dashboards and alert rules checked against real data.

A real Prometheus (Debian package) scrapes a real 3-node cluster on 127.0.0.1 every second, and a real
OperatorMetrics registry served by this process. Load: appends through a follower (forwarded) and the leader,
409s, 404s and 400s, a persistent subscription with parked events, a record corrupted on disk in a follower's
SQLite file and read (503 checksum_mismatch), a leader SIGKILL and its restart. Then every panel target of
both dashboards is evaluated through Prometheus' HTTP API over the load window and must return data; the
failure panels show the failures; each client request is counted once; idle replication lag is 0 s (not the
long-poll wait); the Leader stat names exactly one pod; every alert expression is evaluated, its signal (the
expression before its threshold) returns data, and the alerts about the injected failures fire.
"""
from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client import start_http_server

from evstore.client.harness.localcluster import LocalCluster
from evstore.client.harness.localetcd import EtcdNotFound
from evstore.client.harness.localnode import free_port
from evstore.operator.context import measured
from evstore.operator.metrics import OperatorMetrics
from promproc import PrometheusProcess

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "evstore-operator"
RULES = CHART / "rules" / "evstore.rules.yaml"
STORE = "obs"
NAMESPACE = "test"
RATE_WINDOW = "4s"  # $__rate_interval at a 1 s scrape interval: four samples
MARKER = "needle-7d02c4-corrupt"
TIME_BOUND = 110.0  # the whole test, load and evaluation, must fit in under two minutes
VARIABLES = {"namespace": NAMESPACE, "store": STORE, "handler": ".*", "__rate_interval": RATE_WINDOW}


def call(method: str, url: str, body=None, timeout: float = 15.0) -> tuple[int, dict]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else {}


def append(url: str, stream: str, data, expected=None) -> tuple[int, dict]:
    body = {"events": [{"type": "T", "data": data}]}
    if expected is not None:
        body["expectedVersion"] = expected
    return call("POST", f"{url}/v1/streams/{stream}", body)


def substitute(expr: str) -> str:
    """Grafana's variables, as Grafana would fill them in for this store; $1 (a label_replace group) stays."""
    return re.sub(r"\$\{?(\w+)}?", lambda m: VARIABLES.get(m[1], m[0]), expr)


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return [p for p in out if p["type"] != "row"]


def signal_of(expr: str) -> str:
    """An alert's expression without its threshold: what it compares (the left side of the first comparison)."""
    node = promql_parser.parse(expr)
    while isinstance(node, promql_parser.BinaryExpr):
        if str(node.op) in ("and", "or", "unless"):
            node = node.lhs
            continue
        if str(node.op) in ("<", ">", "<=", ">=", "==", "!="):
            if isinstance(node.rhs, promql_parser.NumberLiteral):
                return str(node.lhs)
            return f"({node.lhs}) - ({node.rhs})"  # a comparison of two vectors: their difference
        break
    return str(node)


def peak(result: list[dict]) -> float:
    return max(values(result), default=float("-inf"))


def values(result: list[dict]) -> list[float]:
    return [float(v) for series in result for _, v in series.get("values", [series.get("value", [0, "nan"])])
            if v not in ("NaN", "+Inf", "-Inf")]


def flip_byte(db: Path, marker: bytes) -> None:
    blob = bytearray(db.read_bytes())
    at = blob.find(marker)
    assert at >= 0, "the marker must be in the checkpointed database file"
    blob[at + 3] ^= 0x01
    db.write_bytes(bytes(blob))


@pytest.fixture
def cluster(tmp_path):
    # a lease of 3 s leaves the store leaderless for 2-3 s after the kill: several scrapes and rule evaluations
    made = LocalCluster(tmp_path / "cluster", nodes=3, store_id=STORE, lease_ttl=3.0)
    try:
        made.start()
    except EtcdNotFound as exc:
        pytest.skip(str(exc))
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def operator_metrics():
    metrics = OperatorMetrics()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        yield metrics, port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def prometheus(tmp_path, cluster, operator_metrics):
    scrape = [{"job_name": f"{STORE}-peers", "static_configs": [
        {"targets": [f"127.0.0.1:{cluster.node(i).port}"], "labels": {"namespace": NAMESPACE, "pod": cluster.node_id(i)}}
        for i in range(cluster.size)]},
        {"job_name": "evstore-operator", "static_configs": [
            {"targets": [f"127.0.0.1:{operator_metrics[1]}"], "labels": {"namespace": NAMESPACE}}]}]
    proc = PrometheusProcess(tmp_path / "prometheus", scrape, [str(RULES)])
    try:
        yield proc.start()
    finally:
        proc.stop()


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)  # Prometheus scrapes on its clock: nothing to await


def test_dashboards_and_alerts_against_a_real_cluster(cluster, prometheus, operator_metrics):
    started = time.monotonic()
    t0 = time.time()
    leader, _ = cluster.wait_leader(30)
    follower, other = [i for i in range(3) if i != leader]
    lead_url, follow_url, other_url = cluster.urls[leader], cluster.urls[follower], cluster.urls[other]
    wait_until(lambda: len(prometheus.query(f'up{{job="{STORE}-peers"}} == 1', time.time())) == 3, 20,
               "Prometheus scraping every node")

    # healthy load: appends through a follower (forwarded to the leader) and on the leader
    for k in range(30):
        assert append(follow_url if k % 3 else lead_url, f"orders-{k % 5}", {"k": k})[0] == 200
    conflicts = 5
    for k in range(conflicts):  # wrong expected version, sent to a follower: forwarded, 409 once per client request
        status, body = append(follow_url, "orders-0", {"late": k}, expected=1)
        assert status == 409 and body["error"] == "wrong_expected_version", body
    for k in range(4):
        assert call("GET", f"{follow_url}/v1/streams/missing-{k}")[0] == 404
    for k in range(3):
        assert call("POST", f"{lead_url}/v1/streams/bad", b"{not json")[0] == 400
    # a persistent subscription whose events are parked
    status, body = call("PUT", f"{follow_url}/v1/subscriptions/billing",
                        {"stream": "orders-1", "startFrom": "start", "maxRetries": 0})
    assert status in (200, 201), body
    status, fetched = call("POST", f"{lead_url}/v1/subscriptions/billing/fetch?max=3&wait=5", {})
    assert status == 200 and fetched["events"], fetched
    status, body = call("POST", f"{lead_url}/v1/subscriptions/billing/nack",
                        {"ids": [e["deliveryId"] for e in fetched["events"]], "action": "park"})
    assert status in (200, 204), body

    # a record corrupted on a follower's disk, then read there: 503 checksum_mismatch, counted with path="read"
    status, victim = append(lead_url, "victim", MARKER)
    assert status == 200
    wait_until(lambda: call("GET", f"{other_url}/v1/streams/victim")[0] == 200, 10, "the victim replicated")
    assert cluster.node(other).terminate() == 0  # a clean stop checkpoints the WAL into the database file
    flip_byte(cluster.node(other).data_dir / "evstore.db", MARKER.encode())
    restarted = time.time()
    cluster.node(other).start()
    # the restarted node's checksum series has been scraped at 0 (that is what pre-creating it is for): a
    # failure folded into a process's first scrape could only show through a window spanning the restart
    pod = cluster.node_id(other)
    wait_until(lambda: prometheus.query(f'timestamp(up{{pod="{pod}"}} == 1) > {restarted}', time.time()), 10,
               "a scrape of the restarted node")
    corrupt_reads = 8
    for _ in range(corrupt_reads):
        status, body = call("GET", f"{other_url}/v1/streams/victim")
        assert status == 503 and body["reason"] == "checksum_mismatch", body

    # the leader is SIGKILLed; writes go on through the follower, which waits for the next leader
    cluster.node(leader).kill()
    for k in range(10):
        append(follow_url, f"orders-{k % 5}", {"after-kill": k})  # 200 or 503: both are part of the test
    new_leader, _ = cluster.wait_leader(30, exclude=(leader,))
    assert new_leader != leader
    cluster.node(leader).start()
    for k in range(10):
        assert append(cluster.urls[new_leader], f"orders-{k % 5}", {"end": k})[0] == 200
    with pytest.raises(RuntimeError), measured(operator_metrics[0], "reconcile"):  # the operator's own accounting
        raise RuntimeError("a reconcile that failed")
    load_end = time.time()

    # Prometheus has scraped every node after the load, and the idle cluster for a few seconds more
    wait_until(lambda: len(prometheus.query(f'timestamp(up{{job="{STORE}-peers"}} == 1) > {load_end + 3}',
                                            time.time())) == 3, 20, "scrapes after the load")
    end = time.time()

    # every panel target of both dashboards returns data over the window
    results: dict[str, dict[str, list[dict]]] = {}
    for path in sorted((CHART / "dashboards").glob("*.json")):
        for panel in panels(json.loads(path.read_text())):
            for target in panel["targets"]:
                expr = substitute(target["expr"])
                found = (prometheus.query(expr, end) if target.get("instant")
                         else prometheus.query_range(expr, t0, end))
                assert found, f"{path.name} panel {panel['title']!r} target {target['refId']}: no data for {expr}"
                results.setdefault(panel["title"], {})[target["refId"]] = found

    def range_of(title: str, ref: str = "A") -> list[dict]:
        panel = next(p for p in panels(json.loads((CHART / "dashboards" / "evstore-overview.json").read_text()))
                     if p["title"] == title)
        target = next(t for t in panel["targets"] if t["refId"] == ref)
        return prometheus.query_range(substitute(target["expr"]), t0, end)

    # the failure panels show the injected failures
    checksum = results["Checksum failures"]["A"]
    assert any(s["metric"].get("path") == "read" and max(values([s]), default=0) > 0 for s in checksum), checksum
    errors_4xx, errors_5xx = results["HTTP errors per second"]["A"], results["HTTP errors per second"]["B"]
    assert {"400", "404", "409"} <= {s["metric"]["status"] for s in errors_4xx if max(values([s]), default=0) > 0}
    assert any(s["metric"]["status"] == "503" and max(values([s]), default=0) > 0 for s in errors_5xx)
    assert peak(results["HTTP 5xx ratio"]["A"]) > 0
    assert peak([s for s in results["Elections and etcd"]["A"]]) > 0
    led = {s["metric"]["pod"] for s in results["Leader flag"]["A"] if max(values([s]), default=0) == 1}
    assert {cluster.node_id(leader), cluster.node_id(new_leader)} <= led
    assert len({v for v in values(results["Epoch"]["A"])}) >= 2
    assert min(values(range_of("Pods up")), default=3) < 3  # the kill shows (the stat itself is the instant)
    assert peak(results["Parked events"]["A"]) > 0
    assert peak(results["Connections and in-flight requests"]["B"]) >= 1  # the scrape itself is in flight
    # the Leader stat is an instant: exactly the new leader, not every pod that led within the range
    assert [s["metric"]["pod"] for s in results["Leader"]["A"]] == [cluster.node_id(new_leader)]
    # per-pod status table: one row per pod in each column
    for ref, found in results["Pods"].items():
        pods = {s["metric"].get("pod") for s in found}
        assert pods == {cluster.node_id(i) for i in range(3)} or ref == "F", (ref, found)

    # counts that add up: each client 409 once among the client series, though the leader saw each again
    # client routes as the dashboards select them: a follower's fetch refused 409 (epoch mismatch) after the
    # failover is replication, not a client's conflict
    client_409 = prometheus.query(f'sum(evstore_http_requests_total{{job="{STORE}-peers", status="409", '
                                  f'forwarded="false", route!~"/v1/internal/.*|/metrics|/health/.*"}})', end)
    assert values(client_409) == [conflicts]
    forwarded_409 = prometheus.query_range(f'sum(evstore_http_requests_total{{job="{STORE}-peers", status="409", '
                                           f'forwarded="true"}})', t0, end)
    assert peak(forwarded_409) == conflicts
    # an idle follower is 0 s behind, however long its long-poll waits
    idle_lag = prometheus.query(f'max(max_over_time(evstore_replication_lag_seconds{{job="{STORE}-peers"}}[2s]))', end)
    assert values(idle_lag) == [0.0], idle_lag

    # every alert expression evaluates; its signal returns data; the injected failures make alerts fire
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    firing_in_window = set()
    for rule in rules:
        signal = prometheus.query_range(signal_of(rule["expr"]), t0, end)
        assert signal, f"{rule['alert']}: its signal {signal_of(rule['expr'])} has no data"
        # evaluated at every quarter second (Prometheus answers 400 on a bad expression)
        if prometheus.query_range(rule["expr"], t0, end, step=0.25):
            firing_in_window.add(rule["alert"])
    assert {"EvstoreNoLeader", "EvstoreChecksumFailure", "EvstoreHighErrorRatio",
            "EvstoreOperatorReconcileErrors"} <= firing_in_window, firing_in_window
    # and Prometheus itself, evaluating the same rule file, has them pending or firing
    alerts = {s["metric"]["alertname"] for s in prometheus.query_range("ALERTS", t0, end)}
    assert {"EvstoreNoLeader", "EvstoreChecksumFailure"} <= alerts, alerts
    assert time.monotonic() - started < TIME_BOUND
