"""Grafana dashboards in charts/evstore-operator/dashboards.

Proves: every panel query and every variable query parses as PromQL (promql-parser) and names only
metrics that the node (NodeMetrics) or the operator (OperatorMetrics) actually export, with the
suffixes prometheus_client gives them (_total, _bucket/_sum/_count); the dashboards cover what the
issue asks for; panels have unique ids, titles, a templated data source and a sane layout.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import pytest
from prometheus_client import CollectorRegistry

from evstore.node.metrics import NodeMetrics
from evstore.operator.metrics import OperatorMetrics

DASHBOARDS = Path(__file__).resolve().parents[2] / "charts" / "evstore-operator" / "dashboards"
FILES = sorted(DASHBOARDS.glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}

# Metrics each dashboard must use, so that the list is covered (throughput, latency
# p50/p99, leader/epoch, members/ISR, replication lag, sync latency, storage, HTTP errors;
# reconciles, errors, duration, managed/ready stores).
REQUIRED = {
    "evstore-overview.json": {
        "evstore_appends_total", "evstore_events_appended_total",
        "evstore_append_latency_seconds_bucket", "evstore_read_latency_seconds_bucket",
        "evstore_sync_latency_seconds_bucket", "evstore_leader", "evstore_epoch", "evstore_members",
        "evstore_isr_size", "evstore_replication_lag_events",
        "evstore_http_requests_total", "evstore_subscribers", "evstore_subscription_delivery_latency_seconds_bucket",
        "evstore_subscription_lag", "evstore_subscription_in_flight", "evstore_subscription_parked",
        "evstore_subscription_redeliveries_total",
        # what an on-call engineer needs (issue 14)
        "up", "evstore_ready", "evstore_build_info", "evstore_start_time_seconds", "evstore_min_in_sync",
        "evstore_leader_changed_timestamp_seconds", "evstore_volume_free_bytes", "evstore_volume_total_bytes",
        "evstore_storage_file_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes",
        "process_open_fds", "python_gc_collections_total", "evstore_http_open_connections",
        "evstore_http_requests_in_flight", "evstore_etcd_request_duration_seconds_bucket",
        "evstore_etcd_lease_renewal_failures_total", "evstore_gossip_rejected_total",
        "evstore_checksum_failures_total", "evstore_replication_lag_seconds",
    },
    "evstore-operator.json": {
        "evstore_operator_reconciles_total", "evstore_operator_reconcile_errors_total",
        "evstore_operator_reconcile_duration_seconds_bucket", "evstore_operator_managed_stores",
        "evstore_operator_ready_stores",
    },
}

# Grafana substitutes these before the query reaches Prometheus.
GRAFANA_RANGES = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)}")
GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)}?")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*[A-Za-z_]\w*\s*\)$")


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry can expose, including labelled metrics that have no children yet."""
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


# series Prometheus itself adds to every scrape target
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


@pytest.fixture(scope="module")
def known_metrics() -> set[str]:
    return exported_names(NodeMetrics().registry) | exported_names(OperatorMetrics().registry) | SCRAPE_SERIES


def as_promql(expr: str) -> str:
    """Replace Grafana's variables by values Prometheus would see."""
    expr = GRAFANA_RANGES.sub("5m", expr)
    return GRAFANA_VARIABLE.sub("x", expr)


def metric_names(expr: str) -> set[str]:
    """Names of every series selector in a PromQL expression; a selector without a fixed name fails."""
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.MatrixSelector):
            node = node.vector_selector
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next((m.value for m in node.matchers.matchers
                                      if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal), None)
            assert name, f"selector without a metric name in {expr!r}"
            names.add(name)

    promql_parser.walk(promql_parser.parse(as_promql(expr)), pre_visit=visit)
    return names


def all_panels(panels: list[dict]) -> list[dict]:
    """Panels including those nested in (collapsed) rows."""
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(all_panels(panel.get("panels", [])))
    return out


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every label_values() variable."""
    found = [(f"panel {p['id']} {p['title']!r} target {t.get('refId')}", t["expr"])
             for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = LABEL_VALUES.match(query)
            assert match, f"variable {variable['name']}: only label_values(selector, label) is used here"
            found.append((f"variable {variable['name']}", match["selector"]))
    return found


def test_both_dashboards_exist():
    assert [p.name for p in FILES] == ["evstore-operator.json", "evstore-overview.json"]


def test_metric_name_extraction_sees_every_selector():
    """Control for the checks below: nested, range and __name__ selectors are all found."""
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{store=~"$store"}[$__rate_interval]))) '
            '/ on () group_left max(b) + count({__name__="c"}) - sum_over_time(d[1h:5m])')
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}


def test_registries_expose_suffixed_names(known_metrics):
    assert {"evstore_appends_total", "evstore_append_latency_seconds_bucket", "evstore_leader",
            "evstore_operator_reconcile_duration_seconds_count"} <= known_metrics
    assert "evstore_appends" not in known_metrics  # a counter is only exposed with _total


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_query_parses_and_uses_only_exported_metrics(path, known_metrics):
    used = set()
    for where, expr in queries(load(path)):
        try:
            names = metric_names(expr)
        except (ValueError, RuntimeError) as exc:  # promql-parser raises on syntax errors
            pytest.fail(f"{path.name} {where}: {expr!r} does not parse: {exc}")
        unknown = names - known_metrics
        assert not unknown, f"{path.name} {where}: unknown metrics {sorted(unknown)} in {expr!r}"
        used |= names
    missing = REQUIRED[path.name] - used
    assert not missing, f"{path.name} does not show {sorted(missing)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_structure(path):
    dashboard = load(path)
    assert dashboard["title"] and dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = all_panels(dashboard["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    assert all(isinstance(p.get("title"), str) and p["title"].strip() for p in panels)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
        for var in re.findall(r"\$\{?(\w+)", " ".join(t["expr"] for t in panel["targets"])):
            # $1 is a label_replace() group: Grafana leaves names it does not know alone
            assert var.startswith("__") or var.isdigit() or var in variables, f"{panel['title']!r} uses undefined ${var}"


STORE_SELECTOR = 'job=~"($store)-peers"'


def test_overview_filters_by_store():
    dashboard = load(DASHBOARDS / "evstore-overview.json")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    store = variables["store"]
    assert store["regex"] == "/^(.+)-peers$/" and store["query"]["query"].endswith(", job)")
    assert store["includeAll"] and store["allValue"] == ".*"
    for where, expr in queries(dashboard):
        if where.startswith("panel"):
            assert STORE_SELECTOR in expr, f"{where} ignores the store variable: {expr}"


def test_store_variable_matches_the_operators_service_monitor():
    """Contract with evstore.operator.manifests: Prometheus sets job=<scraped Service name>; the
    store's ServiceMonitor must scrape only the headless "<store>-peers" Service and keep that job."""
    from evstore.operator import manifests
    from evstore.operator.spec import parse_spec

    spec = parse_spec("orders", "shop", {"monitoring": {"serviceMonitor": True}})
    monitor = manifests.service_monitor(spec)
    assert "jobLabel" not in monitor["spec"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [svc for svc in (manifests.peers_service(spec), manifests.client_service(spec))
               if selector.items() <= svc["metadata"]["labels"].items()]
    assert [svc["metadata"]["name"] for svc in scraped] == ["orders-peers"]
    job = scraped[0]["metadata"]["name"]
    assert re.fullmatch(r"^(.+)-peers$", job)[1] == "orders"  # the store variable's regex
    assert re.fullmatch(STORE_SELECTOR.split('"')[1].replace("$store", ".*"), job)  # the "All" value


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_panels_do_not_overlap_and_fit_the_grid(path):
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(load(path)["panels"]):
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def _overview_panels() -> dict[str, dict]:
    return {p["title"]: p for p in all_panels(load(DASHBOARDS / "evstore-overview.json")["panels"])}


def test_stats_are_instant_and_per_store():
    """A stat over a range names every value the range saw (the old and the new leader after a failover):
    stats ask for the instant, and split by store when several stores are shown."""
    for panel in _overview_panels().values():
        if panel["type"] in ("stat", "table"):
            for target in panel["targets"]:
                assert target["instant"] is True and target["range"] is False, panel["title"]
        if panel["type"] == "stat":
            expr = panel["targets"][0]["expr"]
            assert re.match(r"^(time\(\) - )?(max|min|sum) by \(namespace, job", expr), (panel["title"], expr)


def test_leader_flag_and_epoch_are_separate_panels():
    panels = _overview_panels()
    assert [metric_names(t["expr"]) for t in panels["Leader flag"]["targets"]] == [{"evstore_leader"}]
    assert [metric_names(t["expr"]) for t in panels["Epoch"]["targets"]] == [{"evstore_epoch"}]


def test_http_panels_count_each_client_request_once_and_leave_internal_routes_out():
    for title in ("HTTP errors per second", "HTTP 5xx ratio", "HTTP request duration p99 by route",
                  "Client requests per second"):
        for target in _overview_panels()[title]["targets"]:
            selectors = re.findall(r"evstore_http_\w+\{([^}]*)}", target["expr"])
            assert selectors, title
            for selector in selectors:
                assert 'forwarded="false"' in selector, (title, selector)
                assert 'route!~"/v1/internal/.*|/metrics|/health/.*"' in selector, (title, selector)


def test_pods_table_shows_each_pods_status():
    table = _overview_panels()["Pods"]
    used = set().union(*(metric_names(t["expr"]) for t in table["targets"]))
    assert {"up", "evstore_ready", "evstore_leader", "evstore_epoch", "evstore_head_position",
            "evstore_replication_lag_events", "evstore_build_info", "evstore_start_time_seconds"} <= used
    assert all(t["format"] == "table" for t in table["targets"])


def test_per_store_dashboards_get_their_own_uid():
    """The operator ships the overview once per store: two stores' copies must not share a uid."""
    from evstore.operator import manifests
    from evstore.operator.spec import parse_spec

    text = (DASHBOARDS / "evstore-overview.json").read_text()
    uids, titles = set(), set()
    for name, namespace in (("orders", "shop"), ("orders", "billing"), ("payments", "shop")):
        spec = parse_spec(name, namespace, {"monitoring": {"dashboards": True}})
        data = manifests.dashboards_configmap(spec, {"evstore-overview.json": text})["data"]
        dashboard = json.loads(data["evstore-overview.json"])
        assert len(dashboard["uid"]) <= 40
        uids.add(dashboard["uid"])
        titles.add(dashboard["title"])
        store = {v["name"]: v for v in dashboard["templating"]["list"]}["store"]
        assert store["current"]["value"] == [name]
    assert len(uids) == 3 and len(titles) == 3
