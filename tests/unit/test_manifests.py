"""Pure manifest builders: spec -> dicts that Kubernetes accepts (kubernetes-validate --strict)."""
from __future__ import annotations

import json

import copy

import kubernetes_validate
import pytest

from evstore.operator import manifests as m
from evstore.operator.spec import SpecError, parse_spec

K8S_VERSIONS = ["1.30.0", "1.33.0"]
SPECS = {
    "single": {},
    "managed-etcd": {"replicas": 3, "storage": {"size": "5Gi", "storageClassName": "ssd"},
                     "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}},
    "everything": {"replicas": 5, "image": "evstore:2", "imagePullPolicy": "IfNotPresent",
                   "etcd": {"endpoints": ["http://etcd-0.infra.svc:2379", "http://etcd-1.infra.svc:2379"]},
                   "clusterSecretRef": {"name": "mine", "key": "token"},
                   "durability": {"mode": "interval", "syncInterval": 0.05, "minInSync": 3},
                   "maxBodyBytes": 1048576, "logLevel": "debug",
                   "scheduling": {"nodeSelector": {"kubernetes.io/os": "linux"},
                                  "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
                                  "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                      "nodeSelectorTerms": [{"matchExpressions": [
                                          {"key": "zone", "operator": "In", "values": ["a"]}]}]}}}},
                   "monitoring": {"serviceMonitor": True, "dashboards": True}},
    "pod-settings": {"replicas": 3, "imagePullSecrets": [{"name": "registry"}],
                     "podMetadata": {"labels": {"team": "shop", "app.kubernetes.io/instance": "spoofed"},
                                     "annotations": {"example.com/owner": "shop"}},
                     "scheduling": {"priorityClassName": "critical", "topologySpreadConstraints": [
                         {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                          "whenUnsatisfiable": "ScheduleAnyway",
                          "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "orders"}}}]},
                     "etcd": {"managed": True, "resources": {"requests": {"cpu": "200m"}}}},
}


def store(name="orders", **spec):
    return parse_spec(name, "shop", spec)


def all_manifests(spec):
    owner = m.owner_reference(spec.name, "1f0e3c1a-0000-4000-8000-000000000001")
    objs = m.desired_children(spec, dashboards={"overview.json": '{"title": "evstore"}'})
    objs.append(m.cluster_secret(spec, "s3cret"))
    objs.append(m.api_tokens_secret(spec, {r: f"{r}-token-0123456789" for r in ("admin", "write", "read")}))
    if spec.etcd_auth:
        objs.append(m.etcd_auth_secret(spec, root_password="r" * 20, node_password="n" * 20, jwt_key="k" * 40))
    return [m.owned(obj, owner) for obj in objs]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("label", sorted(SPECS))
def test_every_manifest_passes_kubernetes_validate_strict(label, version):
    for obj in all_manifests(store(**SPECS[label])):
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD of the Prometheus Operator: its shape is checked below
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_catches_an_unknown_field():
    sts = m.statefulset(store())
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[0], strict=True)


def test_children_depend_on_the_spec():
    kinds = lambda spec: sorted(f"{o['kind']}/{o['metadata']['name']}" for o in m.desired_children(spec))
    assert kinds(store(etcd={"managed": False})) == [
        "ConfigMap/orders-config", "NetworkPolicy/orders", "PodDisruptionBudget/orders",
        "Service/orders", "Service/orders-peers", "StatefulSet/orders"]
    assert "StatefulSet/orders-etcd" in kinds(store())  # clustered even at one replica
    managed = kinds(store(replicas=3))
    assert "StatefulSet/orders-etcd" in managed and "Service/orders-etcd" in managed
    assert "NetworkPolicy/orders-etcd" in managed
    assert "PodDisruptionBudget/orders-etcd" in managed
    external = m.desired_children(store(**SPECS["everything"]), dashboards={"a.json": "{}"})
    names = [f"{o['kind']}/{o['metadata']['name']}" for o in external]
    assert "StatefulSet/orders-etcd" not in names
    assert "ServiceMonitor/orders" in names and "ConfigMap/orders-dashboards" in names


def test_statefulset_runs_the_node_with_the_contracted_settings():
    spec = store(**SPECS["everything"])
    sts = m.statefulset(spec)
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["evstore", "serve"]
    assert container["image"] == "evstore:2"
    assert container["ports"] == [{"name": "http", "containerPort": 7113, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["envFrom"] == [{"configMapRef": {"name": "orders-config"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["EVSTORE_NODE_ID"]["value"] == "$(POD_NAME)"
    assert env["EVSTORE_ADVERTISE_URL"]["value"] == "http://$(POD_NAME).orders-peers.shop.svc:7113"
    assert env["EVSTORE_DISCOVERY_INTERFACES"]["value"] == "$(POD_IP)"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # the cluster secret is a mounted file, not an environment variable (/proc/PID/environ, `kubectl exec env`)
    assert "EVSTORE_CLUSTER_SECRET" not in env
    assert "--cluster-secret-file=/etc/evstore/cluster/secret" in container["args"]
    mount = {"name": "cluster-secret", "mountPath": "/etc/evstore/cluster", "readOnly": True}
    assert mount in container["volumeMounts"]
    assert next(v for v in pod["volumes"] if v["name"] == "cluster-secret")["secret"] == {
        "secretName": "mine", "defaultMode": 0o440, "items": [{"key": "token", "path": "secret"}]}
    assert not any("secretKeyRef" in str(e) for e in container["env"])
    # $(VAR) expansion only sees variables defined earlier in the list.
    names = [e["name"] for e in container["env"]]
    assert names.index("POD_NAME") < names.index("EVSTORE_ADVERTISE_URL")
    assert names.index("POD_IP") < names.index("EVSTORE_DISCOVERY_INTERFACES")
    assert sts["spec"]["serviceName"] == "orders-peers"
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert "nodeAffinity" in pod["affinity"] and "podAntiAffinity" in pod["affinity"]
    assert container["volumeMounts"][0] == {"name": "data", "mountPath": "/data"}


def test_pods_read_their_api_tokens_from_the_tokens_secret():
    tokens = {"admin": "a" * 16, "write": "w" * 16, "read": "r" * 16}
    secret = m.api_tokens_secret(store(), tokens)
    assert secret["metadata"]["name"] == "orders-api-tokens"
    assert secret["stringData"] == {**tokens, "api-tokens": f"{'a' * 16} admin\n{'w' * 16} write\n{'r' * 16} read\n"}
    pod = m.statefulset(store())["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["--api-tokens-file=/etc/evstore/api-tokens/api-tokens",
                                 "--cluster-secret-file=/etc/evstore/cluster/secret",
                                 "--min-in-sync-file=/etc/evstore/in-sync/min-in-sync"]
    assert {"name": "api-tokens", "mountPath": "/etc/evstore/api-tokens", "readOnly": True} in container["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == "api-tokens")
    assert volume["secret"] == {"secretName": "orders-api-tokens", "defaultMode": 0o440,
                                "items": [{"key": "api-tokens", "path": "api-tokens"}]}
    mine = m.statefulset(store(auth={"tokensSecretRef": {"name": "my-tokens"}}))["spec"]["template"]["spec"]
    assert next(v for v in mine["volumes"] if v["name"] == "api-tokens")["secret"]["secretName"] == "my-tokens"


def test_a_users_tokens_file_is_checked_without_quoting_tokens():
    admin = "a" * 16
    assert m.tokens_file_problem(f"# mine\n{admin} admin\n{'r' * 16} read\n", admin=admin) is None
    assert m.tokens_file_problem(m.tokens_file({"admin": admin, "write": "w" * 16, "read": "r" * 16}),
                                 admin=admin) is None
    short = m.tokens_file_problem(f"{admin} admin\nshort-token read\n", admin=admin)
    assert "line 2" in short and "short-token" not in short
    assert "not an admin line" in m.tokens_file_problem(f"{admin} write\n", admin=admin)
    assert "not an admin line" in m.tokens_file_problem(f"{'b' * 16} admin\n", admin=admin)


def test_network_policy_admits_the_store_the_operator_clients_and_prometheus():
    policy = m.network_policy(store())
    assert policy["spec"]["podSelector"] == {"matchLabels": m.selector_labels("orders")}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 7113}]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": m.selector_labels("orders")}},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator",
                                         "app.kubernetes.io/part-of": "evstore"}}},
        {"podSelector": {"matchLabels": {"evstore.io/client": "orders"}}},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}, "namespaceSelector": {}},
    ]
    etcd = m.etcd_network_policy(store(replicas=3))
    assert etcd["spec"]["podSelector"] == {"matchLabels": m.selector_labels("orders", "etcd")}
    sources = [peer for rule in etcd["spec"]["ingress"] for peer in rule["from"]]
    assert {"podSelector": {"matchLabels": m.selector_labels("orders")}} in sources
    assert {"podSelector": {"matchLabels": m.selector_labels("orders", "etcd")}} in sources


def test_configmap_holds_the_shared_settings():
    data = m.configmap(store(**SPECS["everything"]))["data"]
    assert data == {
        "EVSTORE_STORE_ID": "shop.orders", "EVSTORE_DATA_DIR": "/data", "EVSTORE_HOST": "0.0.0.0",
        "EVSTORE_PORT": "7113", "EVSTORE_DURABILITY": "interval", "EVSTORE_LOG_LEVEL": "debug",
        "EVSTORE_DISCOVERY": "zeroconf,dns,etcd", "EVSTORE_DISCOVERY_DNS": "orders-peers.shop.svc",
        "EVSTORE_ETCD_ENDPOINTS": "http://etcd-0.infra.svc:2379,http://etcd-1.infra.svc:2379",
        "EVSTORE_SYNC_INTERVAL": "0.05", "EVSTORE_MAX_BODY_BYTES": "1048576"}
    # Clustered, minInSync is the in-sync ConfigMap's file (re-read), not a variable read at start.
    assert m.in_sync_configmap(store(**SPECS["everything"]), 3)["data"] == {"min-in-sync": "3"}
    single = m.configmap(store(etcd={"managed": False}))["data"]
    assert "EVSTORE_ETCD_ENDPOINTS" not in single and "EVSTORE_MIN_IN_SYNC" not in single
    assert single["EVSTORE_DISCOVERY"] == "zeroconf,dns"


def test_config_hash_follows_settings_but_not_replicas():
    assert m.config_hash(store(replicas=3)) == m.config_hash(store(replicas=5))
    assert m.config_hash(store(replicas=3)) != m.config_hash(store(replicas=3, logLevel="debug"))


def test_config_hash_covers_the_secrets_values_without_carrying_them():
    spec = store()
    one = m.secrets_digest({"secret": "a" * 20}, {"api-tokens": "t" * 16 + " admin\n"})
    other = m.secrets_digest({"secret": "b" * 20}, {"api-tokens": "t" * 16 + " admin\n"})
    assert one != other and m.config_hash(spec, one) != m.config_hash(spec, other)
    sts = m.statefulset(spec, secrets=one)
    assert sts["spec"]["template"]["metadata"]["annotations"]["evstore.io/config-hash"] == m.config_hash(spec, one)
    assert "a" * 20 not in str(sts) and one not in str(sts)


def test_services_headless_peers_and_client():
    peers, client = m.peers_service(store()), m.client_service(store())
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True
    assert "clusterIP" not in client["spec"]
    assert peers["spec"]["selector"] == client["spec"]["selector"] == m.selector_labels("orders")


def test_pod_disruption_budget_keeps_the_in_sync_set():
    assert m.pod_disruption_budget(store())["spec"]["minAvailable"] == 0  # a single node cannot be protected
    assert m.pod_disruption_budget(store(replicas=3))["spec"]["minAvailable"] == 2
    assert m.pod_disruption_budget(store(replicas=5, durability={"minInSync": 4}))["spec"]["minAvailable"] == 4
    assert not m.pdb_blocks_writes(store(replicas=3))


@pytest.mark.parametrize("spec", [{"replicas": 2}, {"replicas": 3, "durability": {"minInSync": 3}},
                                  {"replicas": 5, "durability": {"minInSync": 5}}])
def test_pod_disruption_budget_never_blocks_every_drain(spec):
    parsed = store(**spec)
    assert m.pod_disruption_budget(parsed)["spec"]["minAvailable"] == parsed.replicas - 1
    assert m.pdb_blocks_writes(parsed)


def test_pods_take_the_pod_settings_and_no_service_account_token():
    spec = store(**SPECS["pod-settings"])
    template = m.statefulset(spec)["spec"]["template"]
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["imagePullSecrets"] == [{"name": "registry"}] and pod["priorityClassName"] == "critical"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert template["metadata"]["labels"]["team"] == "shop"
    assert template["metadata"]["labels"]["app.kubernetes.io/instance"] == "orders", "selector labels win"
    assert template["metadata"]["annotations"]["example.com/owner"] == "shop"
    assert "evstore.io/config-hash" in template["metadata"]["annotations"]
    etcd = m.etcd_statefulset(spec)["spec"]["template"]["spec"]
    assert etcd["automountServiceAccountToken"] is False
    assert etcd["imagePullSecrets"] == [{"name": "registry"}] and etcd["priorityClassName"] == "critical"
    assert "topologySpreadConstraints" not in etcd  # its selector names the node pods
    assert etcd["containers"][0]["resources"] == {"requests": {"cpu": "200m"}}


def test_managed_etcd_compacts_and_has_resources():
    container = m.etcd_statefulset(store(replicas=3))["spec"]["template"]["spec"]["containers"][0]
    assert "--auto-compaction-mode=periodic" in container["args"]
    assert "--auto-compaction-retention=1h" in container["args"]
    # the quota leaves room on the volume for the WAL and snapshots: etcd's alarm comes before a full disk
    quota = next(int(a.split("=")[1]) for a in container["args"] if a.startswith("--quota-backend-bytes="))
    volume = m.etcd_statefulset(store(replicas=3))["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]
    assert quota + 5 * 64 * 2 ** 20 < m.parse_quantity(volume["requests"]["storage"])
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


def test_quantities_compare_by_value():
    desired = m.statefulset(store(resources={"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": 2}}))
    actual = m.stamped(desired)
    actual["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2"}}
    assert m.patch_for(desired, actual) is None
    actual["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "600m"
    assert m.patch_for(desired, actual) is not None
    assert m.same_quantity("1e3", "1k") and not m.same_quantity("1Ki", "1k")


def test_managed_etcd_members_know_each_other():
    spec = store(replicas=3)
    etcd = m.etcd_statefulset(spec)
    args = etcd["spec"]["template"]["spec"]["containers"][0]["args"]
    assert etcd["spec"]["replicas"] == 3 and etcd["spec"]["serviceName"] == "orders-etcd"
    assert ("--initial-cluster=orders-etcd-0=http://orders-etcd-0.orders-etcd.shop.svc:2380,"
            "orders-etcd-1=http://orders-etcd-1.orders-etcd.shop.svc:2380,"
            "orders-etcd-2=http://orders-etcd-2.orders-etcd.shop.svc:2380") in args
    assert m.etcd_endpoints(spec) == [f"http://orders-etcd-{i}.orders-etcd.shop.svc:2379" for i in range(3)]
    assert m.configmap(spec)["data"]["EVSTORE_ETCD_ENDPOINTS"] == ",".join(m.etcd_endpoints(spec))


def test_service_monitor_shape():
    sm = m.service_monitor(store(**SPECS["everything"]))
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert sm["spec"]["selector"]["matchLabels"][m.SERVICE_ROLE_LABEL] == "peers"
    assert m.peers_service(store())["metadata"]["labels"][m.SERVICE_ROLE_LABEL] == "peers"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["shop"]}


def test_dashboards_configmap_carries_the_sidecar_label():
    cm = m.dashboards_configmap(store(), {"overview.json": "{}"})
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and list(cm["data"]) == ["overview.json"]
    assert json.loads(cm["data"]["overview.json"])["uid"].startswith("evstore-")  # the store's own copy


def test_owned_sets_one_controller_reference():
    owner = m.owner_reference("orders", "uid-1")
    once = m.owned(m.configmap(store()), owner)
    twice = m.owned(once, m.owner_reference("orders", "uid-2"))
    assert [r["uid"] for r in twice["metadata"]["ownerReferences"]] == ["uid-2"]
    assert once["metadata"]["ownerReferences"][0]["controller"] is True


def test_patch_for_touches_only_what_differs_and_may_change():
    desired = m.statefulset(store(replicas=3))
    actual = m.stamped(desired)
    actual["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # a server-side default
    actual["status"] = {"replicas": 3}
    assert m.patch_for(desired, actual) is None
    actual["spec"]["replicas"] = 1
    actual["spec"]["serviceName"] = "other"  # immutable: never patched
    assert m.patch_for(desired, actual) == {"spec": {"replicas": 3}, "metadata": {
        "annotations": {m.LAST_APPLIED_ANNOTATION: m.last_applied(desired)}}}
    actual["spec"]["template"]["spec"]["containers"][0]["image"] = "old"
    patch = m.patch_for(desired, actual)
    assert patch["spec"]["template"]["spec"]["containers"][0]["image"] == desired["spec"]["template"]["spec"][
        "containers"][0]["image"]
    assert m.patch_for(m.cluster_secret(store(), "new"), m.cluster_secret(store(), "old")) is None


@pytest.mark.parametrize("name,spec,message", [
    ("Orders", {}, "DNS label"),
    ("x" * 48, {}, "at most 47"),
    ("orders", {"replicas": 10}, "between 1 and 9"),
    ("orders", {"replicas": 3, "etcd": {"managed": False}}, "needs etcd"),
    ("orders", {"etcd": {"managed": True, "endpoints": ["http://e:2379"]}}, "not both"),
    ("orders", {"replicas": 3, "durability": {"minInSync": 4}}, "minInSync"),
    # what the API server would refuse in the pod template (422, and the reconcile would fail for good)
    ("orders", {"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits.memory must be a Kubernetes"),
    ("orders", {"etcd": {"resources": {"requests": {"cpu": "fast"}}}}, "spec.etcd.resources.requests.cpu"),
    ("orders", {"storage": {"size": "big"}}, "spec.storage.size"),
    ("orders", {"podMetadata": {"labels": {"team": "a b"}}}, "spec.podMetadata.labels.team must be a label value"),
    ("orders", {"podMetadata": {"labels": {"bad key!": "x"}}}, "not a valid label name"),
    ("orders", {"durability": {"mode": "async"}}, "durability.mode"),
    ("orders-etcd", {}, "children of the store 'orders'"),
    ("orders-peers", {}, "children of the store 'orders'"),
])
def test_invalid_specs_are_refused(name, spec, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(name, "shop", spec)


def test_store_ids_are_unique_across_namespaces_and_accepted_by_the_node():
    from evstore.node.config import load_settings
    ids = {parse_spec("orders", ns, {}).node_store_id for ns in ("shop", "shop-eu", "billing")}
    assert ids == {"shop.orders", "shop-eu.orders", "billing.orders"}
    longest = parse_spec("o" * 47, "n" * 63, {}).node_store_id
    for store_id in ids | {longest}:
        assert load_settings(["--store-id", store_id]).store_id == store_id


def test_no_two_stores_share_a_child():
    """Names that another store's children could take are refused, so every (kind, name) is one store's."""
    names = ["orders", "orders-etcd", "orders-peers", "orders-0", "orders-config", "orders-dashboards",
             "orders-cluster-secret", "orders-api-tokens", "o", "o-api"]
    seen: dict[tuple[str, str], str] = {}
    for name in names:
        try:
            spec = store(name, replicas=3, monitoring={"serviceMonitor": True, "dashboards": True})
        except SpecError:
            continue
        objs = m.desired_children(spec, dashboards={"a.json": "{}"})
        objs += [m.cluster_secret(spec, "x" * 16), m.api_tokens_secret(spec, {r: r * 16 for r in ("admin", "write", "read")})]
        keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
        keys += [("Pod", f"{o['metadata']['name']}-{i}") for o in objs if o["kind"] == "StatefulSet" for i in range(9)]
        for key in keys:
            assert seen.setdefault(key, name) == name, f"{key} of {name} is also a child of {seen[key]}"


def test_foreign_owner_is_never_ours():
    owner = m.owner_reference("orders", "uid-1")
    desired = m.owned(m.etcd_service(store(replicas=3)), owner)
    assert m.foreign_owner(desired, desired) is None
    other = m.owned(desired, m.owner_reference("orders-x", "uid-2"))
    assert "belongs to EventStore orders-x" in m.foreign_owner(desired, other)
    stranger = {"metadata": {"name": "orders-etcd", "labels": {"app": "mine"}}}
    assert "not managed by the evstore operator" in m.foreign_owner(desired, stranger)
    orphan = {"metadata": {"name": "orders-etcd", "labels": dict(desired["metadata"]["labels"])}}
    assert m.foreign_owner(desired, orphan) is None


def test_defaults():
    spec = store()
    assert (spec.replicas, spec.storage_size, spec.durability_mode, spec.log_level) == (1, "1Gi", "sync", "info")
    assert spec.etcd_managed and not spec.delete_pvcs_on_deletion  # clustered even at one replica
    assert not store(etcd={"managed": False}).etcd_managed
    assert store(replicas=3).etcd_managed and store(replicas=3).required_in_sync == 2
    assert spec.secret_ref.name == "orders-cluster-secret"


def _applied(desired: dict, actual: dict) -> dict:
    """`actual` after the operator's patch, merged as the API server merges a JSON merge patch."""
    from kmock._internal.dicts import merge_patch_dict
    patch = m.patch_for(desired, actual)
    return copy.deepcopy(dict(merge_patch_dict(actual, patch))) if patch else actual


@pytest.mark.parametrize("before,after", [({}, {"replicas": 3}), ({"replicas": 3}, {}),
                                          ({"replicas": 5, "durability": {"minInSync": 3}}, {"replicas": 3})])
def test_a_budget_patched_across_a_scale_holds_one_of_its_two_fields(before, after):
    # the API server refuses a budget with both minAvailable and maxUnavailable; one from an older operator
    # (maxUnavailable for a single node) loses it too
    for old in (m.pod_disruption_budget(store(**before)),
                {**m.pod_disruption_budget(store(**before)), "spec": {"maxUnavailable": 1, "selector": {}}}):
        result = _applied(m.pod_disruption_budget(store(**after)), m.stamped(old))
        assert result["spec"] == m.pod_disruption_budget(store(**after))["spec"]


PLACEMENT = {"scheduling": {"tolerations": [{"key": "pool", "operator": "Exists"}], "nodeSelector": {"pool": "a"},
                            "priorityClassName": "critical"},
             "imagePullSecrets": [{"name": "registry"}], "resources": {"requests": {"cpu": "500m"}},
             "podMetadata": {"labels": {"team": "orders"}, "annotations": {"owner": "orders"}}}


@pytest.mark.parametrize("removed", list(PLACEMENT))
def test_a_setting_removed_from_the_spec_is_removed_from_the_pods(removed):
    with_it = m.statefulset(store(replicas=3, **PLACEMENT))
    without = m.statefulset(store(replicas=3, **{k: v for k, v in PLACEMENT.items() if k != removed}))
    live = m.stamped(with_it)
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # a server-side default, not ours to remove
    live["spec"]["template"]["metadata"].setdefault("annotations", {})["kubectl.kubernetes.io/restartedAt"] = "t"
    result = _applied(without, live)
    template = result["spec"]["template"]
    expected = copy.deepcopy(without["spec"]["template"])
    expected["spec"]["dnsPolicy"] = "ClusterFirst"
    expected["metadata"].setdefault("annotations", {})["kubectl.kubernetes.io/restartedAt"] = "t"
    assert template == expected
    assert m.patch_for(without, result) is None  # and the next pass leaves it alone


def test_an_object_from_before_the_record_gets_it_without_a_change():
    desired = m.statefulset(store(replicas=3))
    patch = m.patch_for(desired, copy.deepcopy(desired))
    assert patch == {"metadata": {"annotations": {m.LAST_APPLIED_ANNOTATION: m.last_applied(desired)}}}


def test_a_stopping_node_closes_its_log_before_the_kubelet_kills_it():
    from evstore.node.app import SHUTDOWN_SECONDS
    pod = m.statefulset(store(replicas=3))["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= SHUTDOWN_SECONDS + 10  # the close after the requests' wait


def test_a_long_start_up_is_not_killed_by_the_startup_probe():
    probe = m.node_container(store())["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 3600
