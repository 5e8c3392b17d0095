"""The Helm chart charts/evstore-operator, rendered by a real helm binary.

Proves: `helm lint --strict` passes; `helm template --include-crds` output passes
`kubernetes-validate --strict` (the ServiceMonitor, a CRD-based kind with no schema there, is checked
by shape instead); the RBAC is exactly the namespaced least-privilege set the operator needs; the
operator Deployment runs the shared image as `evstore operator` non-root on a read-only root
filesystem with a liveness probe on /healthz (answered by its event loop), as two replicas that elect
one active through a Lease; a NetworkPolicy admits only Prometheus to the metrics port; the optional
ServiceMonitor and dashboard ConfigMaps appear only when enabled and are wired correctly; values.schema.json rejects bad values;
the chart's CRD is byte-identical to crds/eventstore.yaml.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "evstore-operator"
NAMESPACE = "evstore-system"
RELEASE = "evs"
KUBE_VERSIONS = ("1.25.0", "1.37.0")  # oldest the chart supports (Chart.yaml kubeVersion) and newest

EXPECTED_RULES = {  # exactly the calls in operator/ (kube.py get/create/patch/list/delete) and kopf's own
    ("evstore.io", "eventstores"): {"list", "watch", "patch"},
    ("evstore.io", "eventstores/status"): {"patch"},
    ("evstore.io", "eventstores/finalizers"): {"update"},
    ("", "secrets"): {"get", "create", "patch"},
    ("", "configmaps"): {"get", "create", "patch"},
    ("", "services"): {"get", "create", "patch"},
    ("apps", "statefulsets"): {"get", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch"},
    ("", "pods"): {"list", "delete"},
    ("", "persistentvolumeclaims"): {"list", "patch", "delete"},
    ("", "events"): {"create"},
    ("coordination.k8s.io", "leases"): {"get", "create", "patch"},
    ("monitoring.coreos.com", "servicemonitors"): {"get", "create", "patch"},
    ("monitoring.coreos.com", "prometheusrules"): {"get", "create", "patch"},
}

MONITORING = ("--set", "metrics.serviceMonitor.enabled=true", "--set", "dashboards.enabled=true",
              "--set", "prometheusRule.enabled=true")
NO_SCHEMA = ("ServiceMonitor", "PrometheusRule")  # CRD-based kinds kubernetes-validate has no schema for
CUSTOM = (
    "--set", "rbac.create=false",
    "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=existing-sa",
    "--set", "metrics.port=9090",
    "--set", "image.repository=registry.example/evstore", "--set", "image.tag=1.2.3",
    "--set", "dashboards.enabled=true", "--set", "dashboards.label=my_dashboards",
    "--set-string", "dashboards.labelValue=yes", "--set", "dashboards.namespace=monitoring",
    "--set", "managedEtcd.image=quay.io/coreos/etcd:v3.5.17",
    "--set", "nodeSelector.kubernetes\\.io/os=linux",
    "--set-json", 'tolerations=[{"key":"dedicated","operator":"Equal","value":"evstore","effect":"NoSchedule"}]',
)


def helm_binary() -> str:
    for candidate in (os.environ.get("HELM"), str(ROOT / ".tools" / "helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = "no helm binary: run `make tools` (scripts/get-helm.sh) or set HELM"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def kubernetes_validate_binary() -> str:
    path = Path(sys.executable).parent / "kubernetes-validate"
    found = str(path) if path.exists() else shutil.which("kubernetes-validate")
    assert found, "kubernetes-validate console script not installed (make install-test)"
    return found


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_binary()


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def template(helm: str, *values: str, include_crds: bool = True) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values]
    if include_crds:
        args.append("--include-crds")
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def documents(rendered: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kubernetes_validate(docs: list[dict], version: str) -> subprocess.CompletedProcess:
    """Pipe the documents through `kubernetes-validate --strict -` as `helm template | ...` would."""
    stream = yaml.safe_dump_all(docs, sort_keys=False)
    return subprocess.run([kubernetes_validate_binary(), "--strict", "-k", version, "-"], input=stream,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return {
        "default": documents(template(helm)),
        "monitoring": documents(template(helm, *MONITORING)),
        "custom": documents(template(helm, *CUSTOM)),
    }


# -- lint and schema-level validation --------------------------------------------------------------

@pytest.mark.parametrize("values", [(), MONITORING, CUSTOM], ids=["default", "monitoring", "custom"])
def test_helm_lint_strict_passes(helm, values):
    result = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize("variant", ["default", "monitoring", "custom"])
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_rendered_manifests_pass_kubernetes_validate_strict(rendered, variant, version):
    docs = [d for d in rendered[variant] if d["kind"] not in NO_SCHEMA]  # checked by shape below
    result = kubernetes_validate(docs, version)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARN" not in output, f"a kind had no schema, so it was not validated:\n{output}"
    assert output.count("passed for resource") == len(docs), output


def test_kubernetes_validate_strict_rejects_an_unknown_field(rendered):
    """Control: the validator really is strict, so the passes above mean something."""
    deployment = json.loads(json.dumps(one(rendered["default"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"tcpSocket": {"port": 8080}}
    result = kubernetes_validate([deployment], KUBE_VERSIONS[-1])
    assert result.returncode != 0
    assert "livenesProbe" in result.stdout


def test_every_kind_is_expected_and_namespaced_in_the_release_namespace(rendered):
    kinds = {variant: sorted(d["kind"] for d in docs) for variant, docs in rendered.items()}
    assert kinds["default"] == sorted(["CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding",
                                       "Service", "Deployment", "ConfigMap", "NetworkPolicy",
                                       "PodDisruptionBudget"])
    assert kinds["monitoring"] == sorted(kinds["default"] + ["ServiceMonitor", "PrometheusRule", "ConfigMap",
                                                             "ConfigMap"])
    for docs in rendered.values():
        assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
        for doc in docs:
            if doc["kind"] == "CustomResourceDefinition":
                continue
            sidecar_map = doc["kind"] == "ConfigMap" and "my_dashboards" in doc["metadata"]["labels"]
            expected = "monitoring" if sidecar_map else NAMESPACE
            assert doc["metadata"]["namespace"] == expected, doc["metadata"]


# -- CRD -------------------------------------------------------------------------------------------

def test_chart_crd_is_byte_identical_to_crds_dir():
    source = ROOT / "crds" / "eventstore.yaml"
    copy = CHART / "crds" / "eventstore.yaml"
    assert source.is_file() and copy.is_file()
    assert copy.read_bytes() == source.read_bytes(), "run: cp crds/eventstore.yaml charts/evstore-operator/crds/"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["eventstore.yaml"]


def test_include_crds_renders_the_eventstore_crd(rendered):
    crd = one(rendered["default"], "CustomResourceDefinition")
    assert crd == yaml.safe_load((ROOT / "crds" / "eventstore.yaml").read_text())
    assert crd["metadata"]["name"] == "eventstores.evstore.io"


# -- RBAC ------------------------------------------------------------------------------------------

def rule_set(role: dict) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_role_grants_exactly_the_verbs_the_operator_uses(rendered):
    role = one(rendered["default"], "Role")
    granted = rule_set(role)
    assert granted == EXPECTED_RULES
    assert all("*" not in key and "*" not in verbs for key, verbs in granted.items())


def test_rolebinding_binds_the_role_to_the_operator_service_account(rendered):
    docs = rendered["default"]
    role, binding, account = one(docs, "Role"), one(docs, "RoleBinding"), one(docs, "ServiceAccount")
    deployment = one(docs, "Deployment")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_rbac_and_service_account_can_be_left_to_the_user(rendered):
    docs = rendered["custom"]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding") and not by_kind(docs, "ServiceAccount")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing-sa"


# -- operator Deployment ---------------------------------------------------------------------------

def operator_container(docs: list[dict]) -> dict:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod["containers"][0]


def env_of(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("variant,image,port", [
    ("default", f"ghcr.io/evstore/evstore:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}",
     8080),
    ("custom", "registry.example/evstore:1.2.3", 9090),
])
def test_deployment_runs_evstore_operator_on_the_shared_image(rendered, variant, image, port):
    container = operator_container(rendered[variant])
    assert container["image"] == image
    assert container["args"] == ["operator", "--namespace", NAMESPACE, "--metrics-port", str(port)]
    env = env_of(container)
    assert env["WATCH_NAMESPACE"] == NAMESPACE
    assert env["EVSTORE_NODE_IMAGE"] == image, "store pods must get the same image as the operator"
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"},
                                  {"name": "health", "containerPort": 8081, "protocol": "TCP"}]
    probe = container["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"}


def test_deployment_args_are_accepted_by_the_real_cli(rendered):
    """The args parse with the `evstore operator` click command itself (nothing is started)."""
    from evstore.client.cli import cli

    args = operator_container(rendered["default"])["args"]
    command = cli.commands[args[0]]
    context = command.make_context(args[0], list(args[1:]))
    assert context.params["namespace"] == NAMESPACE
    assert context.params["metrics_port"] == 8080


def test_default_node_image_matches_the_operators_built_in_default(rendered):
    from evstore.operator.spec import DEFAULT_IMAGE

    assert operator_container(rendered["default"])["image"] == DEFAULT_IMAGE


def test_managed_etcd_image_is_passed_only_when_set(rendered):
    assert "EVSTORE_ETCD_IMAGE" not in env_of(operator_container(rendered["default"]))
    assert env_of(operator_container(rendered["custom"]))["EVSTORE_ETCD_IMAGE"] == "quay.io/coreos/etcd:v3.5.17"


def test_deployment_is_non_root_read_only_and_bounded(rendered):
    deployment = one(rendered["default"], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(rendered["default"])
    # Two replicas, one active through the Lease (operator/leadership.py): a roll never leaves none.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["EVSTORE_OPERATOR_HEALTH_PORT"]["value"] == "8081"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]} == {
        "/tmp": False, "/etc/evstore/dashboards": True}
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]


def test_scheduling_values_reach_the_pod(rendered, helm):
    pod = one(rendered["custom"], "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "evstore",
                                   "effect": "NoSchedule"}]
    default_pod = one(rendered["default"], "Deployment")["spec"]["template"]["spec"]
    assert "nodeSelector" not in default_pod and "tolerations" not in default_pod
    assert list(default_pod["affinity"]) == ["podAntiAffinity"]  # the default spread, see below
    custom = documents(template(helm, "--set-json", 'affinity={"nodeAffinity":{}}'))
    assert one(custom, "Deployment")["spec"]["template"]["spec"]["affinity"] == {"nodeAffinity": {}}


# -- monitoring ------------------------------------------------------------------------------------

def sidecar_maps(docs: list[dict], label: str = "grafana_dashboard") -> list[dict]:
    return [d for d in by_kind(docs, "ConfigMap") if label in d["metadata"]["labels"]]


def test_replicas_spread_over_nodes_and_a_drain_keeps_one(rendered, helm):
    deployment = one(rendered["default"], "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    [term] = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {"topologyKey": "kubernetes.io/hostname",
                                       "labelSelector": {"matchLabels": selector}}
    pdb = one(rendered["default"], "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    single = documents(template(helm, "--set", "replicaCount=1"))
    assert not by_kind(single, "PodDisruptionBudget")


def test_network_policy_admits_only_prometheus_on_the_metrics_port(rendered):
    policy = one(rendered["default"], "NetworkPolicy")
    deployment = one(rendered["default"], "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{
        "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
        "ports": [{"protocol": "TCP", "port": 8080}]}]
    assert one(rendered["custom"], "NetworkPolicy")["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP",
                                                                                        "port": 9090}]
    # The stores' NetworkPolicies admit the operator by these labels (operator/manifests.py).
    from evstore.operator.manifests import OPERATOR_POD_LABELS
    assert OPERATOR_POD_LABELS.items() <= pod_labels.items()


def test_the_stores_admit_the_prometheus_the_chart_names(helm, monkeypatch):
    """The chart's Prometheus selectors reached only the operator's own policy: the stores admitted
    `app.kubernetes.io/name: prometheus` from every namespace, whatever the chart said."""
    import json

    from evstore.operator import manifests, spec
    rendered = documents(template(helm, "--set", "networkPolicy.prometheusPodLabels.app=prom",
                                  "--set", "networkPolicy.prometheusNamespaceLabels.team=monitoring"))
    deployment = one(rendered, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in ("EVSTORE_PROMETHEUS_POD_LABELS", "EVSTORE_PROMETHEUS_NAMESPACE_LABELS"):
        monkeypatch.setenv(name, env[name])
    policy = manifests.network_policy(spec.parse_spec("orders", "shop", {}))
    expected = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus", "app": "prom"}},
                "namespaceSelector": {"matchLabels": {"team": "monitoring"}}}
    assert policy["spec"]["ingress"][0]["from"][-1] == expected
    assert one(rendered, "NetworkPolicy")["spec"]["ingress"][0]["from"] == [expected]
    assert json.loads(env["EVSTORE_PROMETHEUS_NAMESPACE_LABELS"]) == {"team": "monitoring"}


def test_monitoring_objects_are_off_by_default(rendered):
    assert not by_kind(rendered["default"], "ServiceMonitor")
    assert not by_kind(rendered["default"], "PrometheusRule")
    assert not sidecar_maps(rendered["default"])


def test_operator_gets_the_store_dashboard_to_ship_per_store(rendered):
    """spec.monitoring.dashboards makes the operator copy the files in EVSTORE_DASHBOARDS_DIR."""
    docs = rendered["default"]
    container = operator_container(docs)
    directory = env_of(container)["EVSTORE_DASHBOARDS_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (config_map,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"]]
    assert config_map["data"] == {"evstore-overview.json": (CHART / "dashboards" / "evstore-overview.json").read_text(),
                                  "evstore.rules.yaml": (CHART / "rules" / "evstore.rules.yaml").read_text()}
    from evstore.operator.context import ALERT_RULES_FILE
    assert ALERT_RULES_FILE in config_map["data"]  # what the operator narrows per store
    assert "grafana_dashboard" not in config_map["metadata"]["labels"], "Grafana gets the operator's copies"


def test_service_monitor_scrapes_the_operator_metrics_port(rendered):
    docs = rendered["monitoring"]
    monitor, service, deployment = one(docs, "ServiceMonitor"), one(docs, "Service"), one(docs, "Deployment")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    spec = monitor["spec"]
    assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["interval"] == "30s" and endpoint["scrapeTimeout"] == "10s"
    # the Service reaches the operator pod's metrics port
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics" and port["port"] == 8080


@pytest.mark.parametrize("variant,label,value,namespace", [
    ("monitoring", "grafana_dashboard", "1", NAMESPACE),
    ("custom", "my_dashboards", "yes", "monitoring"),
])
def test_dashboards_ship_verbatim_as_labelled_configmaps(rendered, variant, label, value, namespace):
    files = {p.name: p.read_text() for p in (CHART / "dashboards").glob("*.json")}
    assert set(files) == {"evstore-overview.json", "evstore-operator.json"}
    maps = sidecar_maps(rendered[variant], label)
    shipped = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"][label] == value
        assert config_map["metadata"]["namespace"] == namespace
        shipped.update(config_map["data"])
    assert shipped == files
    assert len({m["metadata"]["name"] for m in maps}) == len(files)


# -- values.schema.json ----------------------------------------------------------------------------

@pytest.mark.parametrize("args,field", [
    (("--set", "metrics.serviceMonitor.enabled=maybe"), "enabled"),
    (("--set", "dashboards.enabled=yes"), "enabled"),
    (("--set", "rbac.create=1"), "create"),
    (("--set", "image.pullPolicy=Sometimes"), "pullPolicy"),
    (("--set", "image.tag=7"), "tag"),
    (("--set", "metrics.port=http"), "port"),
    (("--set", "metrics.port=70000"), "port"),
    (("--set", "resources.limits.memory=lots"), "memory"),
    (("--set", "nodeSelector=linux"), "nodeSelector"),
    (("--set-json", 'tolerations=[{"effect":"Sometimes"}]'), "effect"),
    (("--set-json", 'affinity={"nodeAfinity":{}}'), "nodeAfinity"),
    (("--set", "dashboards.label=not a label"), "label"),
    (("--set", "serviceAccount.create=no"), "create"),
    (("--set", "replicaCount=0"), "replicaCount"),
    (("--set", "health.port=0"), "port"),
    # the chart's own labels: the stores' NetworkPolicies admit the operator by them
    (("--set", "podLabels.app\\.kubernetes\\.io/component=other"), "app.kubernetes.io/component"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_values_schema_rejects_bad_values(helm, args, field):
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0, f"helm accepted {args}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert field in result.stderr, result.stderr


def test_metrics_and_health_on_one_port_are_refused(helm):
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "metrics.port=8081",
                      "--set", "health.port=8081")
    assert result.returncode != 0 and "metrics.port and health.port must differ" in result.stderr, result.stderr


def test_values_yaml_itself_satisfies_the_schema():
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


def test_prometheus_rule_ships_the_operators_alerts_from_the_checked_rule_file(rendered):
    """The chart's PrometheusRule holds the operator group of rules/evstore.rules.yaml (the file promtool
    checks and tests, tests/observability/test_alert_rules.py); the store alerts come per store from the
    operator."""
    rule = one(rendered["monitoring"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["namespace"] == NAMESPACE
    groups = yaml.safe_load((CHART / "rules" / "evstore.rules.yaml").read_text())["groups"]
    assert rule["spec"] == {"groups": [g for g in groups if g["name"] == "evstore.operator"]}


def test_the_readmes_permissions_table_is_the_role(rendered):
    """Users who make their own RBAC (rbac.create: false) follow the table: it listed verbs the Role does not
    grant and left out rules it does."""
    import re
    text = (CHART / "README.md").read_text().split("## Permissions", 1)[1].split("\n## ", 1)[0]
    table = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        group = "" if cells[0] == "core" else cells[0].strip("`")
        for resource in re.findall(r"`([^`]+)`", cells[1]):
            table |= {(group, resource, verb.strip()) for verb in cells[2].split(",")}
    role = one(rendered["default"], "Role")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert table == granted
