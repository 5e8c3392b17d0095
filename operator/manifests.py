"""Pure builders: StoreSpec -> Kubernetes manifests (plain dicts). No API calls, no clock, no randomness."""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Mapping

from evstore.operator.quantity import parse_quantity

from evstore.operator.spec import (API_VERSION, CLUSTER_SECRET_KEY, DATA_DIR, ETCD_CLIENT_PORT, ETCD_MEMBERS,
                                   ETCD_PEER_PORT, KIND, NODE_PORT, TOKEN_ROLES, TOKENS_FILE_KEY, StoreSpec)

Manifest = dict[str, Any]

NODE_COMPONENT = "node"
ETCD_COMPONENT = "etcd"
CONFIG_HASH_ANNOTATION = "evstore.io/config-hash"
SERVICE_ROLE_LABEL = "evstore.io/service"
NODE_UID = 10001
DASHBOARD_LABEL = "grafana_dashboard"
TOKENS_DIR = "/etc/evstore/api-tokens"
# The managed etcd's users: their passwords and etcd's JWT signing key live in one generated Secret.
ETCD_ROOT_KEY, ETCD_NODE_KEY, ETCD_JWT_KEY = "root-password", "node-password", "jwt-key"
ETCD_PASSWORD_DIR = "/etc/evstore/etcd"
ETCD_AUTH_DIR = "/etc/etcd-auth"
TOKENS_FILE = f"{TOKENS_DIR}/{TOKENS_FILE_KEY}"
CLUSTER_SECRET_DIR, CLUSTER_SECRET_FILE_NAME = "/etc/evstore/cluster", "secret"
CLUSTER_SECRET_FILE = f"{CLUSTER_SECRET_DIR}/{CLUSTER_SECRET_FILE_NAME}"
# minInSync reaches clustered nodes as a mounted ConfigMap file they re-read (see scaling.py): the
# operator raises it after a scale-up without restarting a pod.
MIN_IN_SYNC_KEY = "min-in-sync"
IN_SYNC_DIR = "/etc/evstore/in-sync"
MIN_IN_SYNC_FILE = f"{IN_SYNC_DIR}/{MIN_IN_SYNC_KEY}"
# Pods that may call a store (besides its own pods and the operator) carry this label, valued with
# the store's name. They still need a token: the NetworkPolicy only narrows who can connect at all.
CLIENT_LABEL = "evstore.io/client"
# The chart's operator pods carry these labels (charts/evstore-operator/templates/_helpers.tpl).
OPERATOR_POD_LABELS = {"app.kubernetes.io/component": "operator", "app.kubernetes.io/part-of": "evstore"}
STARTUP_SECONDS, STARTUP_PROBE_PERIOD = 3600, 5
# The managed etcd's backend quota stays well below its volume, which also holds its WAL (up to 5 x 64 MB) and
# snapshots: at the quota etcd raises its NOSPACE alarm and refuses writes in order, instead of every member
# failing on a full disk at once. The evstore keys (leader, members, ISR) take kilobytes.
ETCD_VOLUME_SIZE = "1Gi"
ETCD_QUOTA_BYTES = 512 * 2 ** 20
# A stopping node gives requests in flight up to node.app.SHUTDOWN_SECONDS, then closes its log (checkpoint,
# leadership resigned): the kubelet's SIGKILL must come after both.
TERMINATION_GRACE_SECONDS = 30


# ---- names -------------------------------------------------------------------------------------

def statefulset_name(store: str) -> str:
    return store


def peers_service_name(store: str) -> str:
    return f"{store}-peers"


def client_service_name(store: str) -> str:
    return store


def configmap_name(store: str) -> str:
    return f"{store}-config"


def in_sync_configmap_name(store: str) -> str:
    return f"{store}-in-sync"


def pdb_name(store: str) -> str:
    return store


def dashboards_configmap_name(store: str) -> str:
    return f"{store}-dashboards"


def etcd_name(store: str) -> str:
    return f"{store}-etcd"


def network_policy_name(store: str) -> str:
    return store


def etcd_auth_secret_name(store: str) -> str:
    return f"{store}-etcd-auth"


def etcd_username(spec: StoreSpec) -> str:
    """The etcd user of the store's nodes, allowed only their key prefix (etcd_key_prefix)."""
    return spec.node_store_id


def etcd_key_prefix(spec: StoreSpec) -> str:
    return f"/evstore/{spec.node_store_id}/"


def pod_name(store: str, ordinal: int) -> str:
    return f"{statefulset_name(store)}-{ordinal}"


def pod_fqdn(store: str, namespace: str, pod: str) -> str:
    return f"{pod}.{peers_service_name(store)}.{namespace}.svc"


def peers_fqdn(store: str, namespace: str) -> str:
    return f"{peers_service_name(store)}.{namespace}.svc"


def managed_etcd_endpoints(store: str, namespace: str) -> list[str]:
    name = etcd_name(store)
    return [f"http://{name}-{i}.{name}.{namespace}.svc:{ETCD_CLIENT_PORT}" for i in range(ETCD_MEMBERS)]


def etcd_endpoints(spec: StoreSpec) -> list[str]:
    if spec.etcd_endpoints:
        return list(spec.etcd_endpoints)
    if spec.etcd_managed:
        return managed_etcd_endpoints(spec.name, spec.namespace)
    return []


# ---- labels and ownership ----------------------------------------------------------------------

def selector_labels(store: str, component: str = NODE_COMPONENT) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "evstore",
        "app.kubernetes.io/instance": store,
        "app.kubernetes.io/component": component,
    }


def labels(store: str, component: str = NODE_COMPONENT) -> dict[str, str]:
    return {**selector_labels(store, component),
            "app.kubernetes.io/part-of": "evstore",
            "app.kubernetes.io/managed-by": "evstore-operator"}


def label_selector(selector: Mapping[str, str]) -> str:
    """The `labelSelector` query string of a matchLabels dict."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def owner_reference(store: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": store, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def owned(manifest: Manifest, owner: Mapping[str, Any]) -> Manifest:
    """A copy of the manifest with the owner reference set (replacing any other controller reference)."""
    result = copy.deepcopy(manifest)
    refs = [r for r in result["metadata"].get("ownerReferences", []) if not r.get("controller")]
    result["metadata"]["ownerReferences"] = refs + [dict(owner)]
    return result


def _metadata(spec: StoreSpec, name: str, component: str = NODE_COMPONENT,
              extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": {**labels(spec.name, component),
                                                                  **(extra_labels or {})}}


# ---- the node's settings -----------------------------------------------------------------------

def node_settings(spec: StoreSpec) -> dict[str, str]:
    """The EVSTORE_* settings shared by every pod of the store (the ConfigMap's data)."""
    settings = {
        "EVSTORE_STORE_ID": spec.node_store_id,
        "EVSTORE_DATA_DIR": DATA_DIR,
        "EVSTORE_HOST": "0.0.0.0",
        "EVSTORE_PORT": str(NODE_PORT),
        "EVSTORE_DURABILITY": spec.durability_mode,
        "EVSTORE_LOG_LEVEL": spec.log_level,
        "EVSTORE_DISCOVERY": "zeroconf,dns,etcd" if spec.etcd_enabled else "zeroconf,dns",
        "EVSTORE_DISCOVERY_DNS": peers_fqdn(spec.name, spec.namespace),
    }
    if endpoints := etcd_endpoints(spec):
        settings["EVSTORE_ETCD_ENDPOINTS"] = ",".join(endpoints)
    if spec.min_in_sync is not None and not spec.etcd_enabled:  # clustered: the in-sync ConfigMap's file
        settings["EVSTORE_MIN_IN_SYNC"] = str(spec.min_in_sync)
    if spec.sync_interval is not None:
        settings["EVSTORE_SYNC_INTERVAL"] = str(spec.sync_interval)
    if spec.max_body_bytes is not None:
        settings["EVSTORE_MAX_BODY_BYTES"] = str(spec.max_body_bytes)
    if spec.etcd_auth:
        settings["EVSTORE_ETCD_USERNAME"] = etcd_username(spec)
        settings["EVSTORE_ETCD_PASSWORD_FILE"] = f"{ETCD_PASSWORD_DIR}/password"
    return settings


def secrets_digest(*secrets: Mapping[str, str]) -> str:
    """A digest of the Secrets' values the pods read (cluster secret, tokens), for config_hash: a new
    value must restart the pods, which read them only at start. Only a digest leaves this function."""
    material = json.dumps([dict(sorted(values.items())) for values in secrets]).encode()
    return hashlib.sha256(b"evstore-secrets\0" + material).hexdigest()


def config_hash(spec: StoreSpec, secrets: str = "") -> str:
    """Changes whenever the pods' configuration changes, so the pod template (and revision) changes too.
    `secrets` is the secrets_digest of the Secrets' current values."""
    material = {"settings": node_settings(spec), "secret": [spec.secret_ref.name, spec.secret_ref.key],
                "tokens": spec.tokens_secret, "secrets": secrets}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


# ---- builders ----------------------------------------------------------------------------------

def cluster_secret(spec: StoreSpec, secret_value: str) -> Manifest:
    """The generated cluster secret (only when spec.clusterSecretRef is absent)."""
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": _metadata(spec, spec.secret_ref.name),
        "type": "Opaque",
        "stringData": {CLUSTER_SECRET_KEY: secret_value},
    }


def tokens_file(tokens: Mapping[str, str]) -> str:
    """The node's --api-tokens-file: one 'TOKEN ROLE' line per role."""
    return "".join(f"{tokens[role]} {role}\n" for role in TOKEN_ROLES)


MIN_TOKEN_LENGTH = 16  # as the node's --api-tokens-file requires (node/config.py)


def tokens_file_problem(text: str, *, admin: str) -> str | None:
    """What the node would refuse in a user's tokens file (it would not start), or a missing admin
    line for the operator's token; None when fine. Never quotes a token."""
    roles: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in TOKEN_ROLES or len(parts[0]) < MIN_TOKEN_LENGTH:
            return (f"{TOKENS_FILE_KEY} line {number}: expected 'TOKEN ROLE' with a token of at least "
                    f"{MIN_TOKEN_LENGTH} characters and a role of {', '.join(TOKEN_ROLES)}")
        if roles.get(parts[0], parts[1]) != parts[1]:
            return f"{TOKENS_FILE_KEY} line {number}: a token of an earlier line again, with another role"
        roles[parts[0]] = parts[1]
    if roles.get(admin.strip()) != "admin":
        return f"the admin key's token is not an admin line of {TOKENS_FILE_KEY}"
    return None


def api_tokens_secret(spec: StoreSpec, tokens: Mapping[str, str]) -> Manifest:
    """The generated API tokens (only when spec.auth.tokensSecretRef is absent): a key per role for
    applications and the operator, and the node's tokens file."""
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": _metadata(spec, spec.tokens_secret),
        "type": "Opaque",
        "stringData": {**{role: tokens[role] for role in TOKEN_ROLES}, TOKENS_FILE_KEY: tokens_file(tokens)},
    }


def etcd_auth_secret(spec: StoreSpec, *, root_password: str, node_password: str, jwt_key: str) -> Manifest:
    """The managed etcd's root password, the nodes' etcd password and etcd's token signing key."""
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": _metadata(spec, etcd_auth_secret_name(spec.name), ETCD_COMPONENT),
        "type": "Opaque",
        "stringData": {ETCD_ROOT_KEY: root_password, ETCD_NODE_KEY: node_password, ETCD_JWT_KEY: jwt_key},
    }


def configmap(spec: StoreSpec) -> Manifest:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(spec, configmap_name(spec.name)),
            "data": node_settings(spec)}


def in_sync_configmap(spec: StoreSpec, min_in_sync: int) -> Manifest:
    """The minInSync the clustered nodes enforce now (scaling.next_min_in_sync decides it)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(spec, in_sync_configmap_name(spec.name)),
            "data": {MIN_IN_SYNC_KEY: str(min_in_sync)}}


def _http_port() -> dict[str, Any]:
    return {"name": "http", "port": NODE_PORT, "targetPort": "http", "protocol": "TCP"}


def peers_service(spec: StoreSpec) -> Manifest:
    """Headless Service: stable pod DNS names and the peer list for discovery (not-ready pods included)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _metadata(spec, peers_service_name(spec.name), extra_labels={SERVICE_ROLE_LABEL: "peers"}),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": selector_labels(spec.name), "ports": [_http_port()]},
    }


def client_service(spec: StoreSpec) -> Manifest:
    """The Service clients use: any ready pod (followers forward writes to the leader)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _metadata(spec, client_service_name(spec.name), extra_labels={SERVICE_ROLE_LABEL: "client"}),
        "spec": {"type": "ClusterIP", "selector": selector_labels(spec.name), "ports": [_http_port()]},
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def node_env(spec: StoreSpec) -> list[dict[str, Any]]:
    """Per-pod settings (the shared ones come from the ConfigMap through envFrom; the cluster secret is a
    mounted file, CLUSTER_SECRET_FILE, kept out of the environment)."""
    return [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_IP", "status.podIP"),
        {"name": "EVSTORE_NODE_ID", "value": "$(POD_NAME)"},
        {"name": "EVSTORE_ADVERTISE_URL",
         "value": f"http://$(POD_NAME).{peers_service_name(spec.name)}.{spec.namespace}.svc:{NODE_PORT}"},
        {"name": "EVSTORE_DISCOVERY_INTERFACES", "value": "$(POD_IP)"},
    ]


def affinity(spec: StoreSpec) -> dict[str, Any]:
    """The user's affinity, plus a preferred anti-affinity spreading the pods over nodes unless they set one."""
    result = copy.deepcopy(dict(spec.affinity or {}))
    result.setdefault("podAntiAffinity", {
        "preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": selector_labels(spec.name)}},
        }],
    })
    return result


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "timeoutSeconds": 3, "failureThreshold": failures}


NODE_CONTAINER = "evstore"


def node_container(spec: StoreSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": NODE_CONTAINER,
        "image": spec.image,
        "command": ["evstore", "serve"],
        "args": [f"--api-tokens-file={TOKENS_FILE}", f"--cluster-secret-file={CLUSTER_SECRET_FILE}"]
                + ([f"--min-in-sync-file={MIN_IN_SYNC_FILE}"] if spec.etcd_enabled else []),
        "envFrom": [{"configMapRef": {"name": configmap_name(spec.name)}}],
        "env": node_env(spec),
        "ports": [{"name": "http", "containerPort": NODE_PORT, "protocol": "TCP"}],
        # the node listens once its log is open: a format migration on a large log (about 20 s per million
        # events) must not be killed half-way and started again, so up to an hour, as CloudNativePG allows
        "startupProbe": _probe("/health/live", STARTUP_PROBE_PERIOD, STARTUP_SECONDS // STARTUP_PROBE_PERIOD),
        "livenessProbe": _probe("/health/live", 10, 6),
        "readinessProbe": _probe("/health/ready", 5, 3),
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}, {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "api-tokens", "mountPath": TOKENS_DIR, "readOnly": True},
                         {"name": "cluster-secret", "mountPath": CLUSTER_SECRET_DIR, "readOnly": True}]
                        + ([{"name": "etcd-password", "mountPath": ETCD_PASSWORD_DIR, "readOnly": True}]
                           if spec.etcd_auth else [])
                        + ([{"name": "in-sync", "mountPath": IN_SYNC_DIR, "readOnly": True}]
                           if spec.etcd_enabled else []),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if spec.resources:
        container["resources"] = copy.deepcopy(dict(spec.resources))
    return container


def _pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": NODE_UID, "runAsGroup": NODE_UID, "fsGroup": NODE_UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _pvc_template(spec: StoreSpec, name: str, component: str, size: str) -> dict[str, Any]:
    pvc_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if spec.storage_class:
        pvc_spec["storageClassName"] = spec.storage_class
    return {"metadata": {"name": name, "labels": labels(spec.name, component)}, "spec": pvc_spec}


def statefulset(spec: StoreSpec, *, secrets: str = "", replicas: int | None = None) -> Manifest:
    """`replicas`: the size to give it now, when a scale-up must wait (scaling.statefulset_replicas)."""
    pod_spec: dict[str, Any] = {
        "securityContext": _pod_security_context(),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        # The node never calls the Kubernetes API.
        "automountServiceAccountToken": False,
        "affinity": affinity(spec),
        "containers": [node_container(spec)],
        "volumes": [{"name": "tmp", "emptyDir": {}},
                    # Only the tokens file: the per-role keys are for applications and the operator.
                    {"name": "api-tokens", "secret": {"secretName": spec.tokens_secret, "defaultMode": 0o440,
                                                      "items": [{"key": TOKENS_FILE_KEY, "path": TOKENS_FILE_KEY}]}},
                    {"name": "cluster-secret", "secret": {
                        "secretName": spec.secret_ref.name, "defaultMode": 0o440,
                        "items": [{"key": spec.secret_ref.key, "path": CLUSTER_SECRET_FILE_NAME}]}}],
        "enableServiceLinks": False,
    }
    if spec.etcd_auth:
        pod_spec["volumes"].append({"name": "etcd-password", "secret": {
            "secretName": etcd_auth_secret_name(spec.name), "defaultMode": 0o440,
            "items": [{"key": ETCD_NODE_KEY, "path": "password"}]}})
    if spec.etcd_enabled:
        # Not a subPath mount: the kubelet updates only whole ConfigMap volumes in a running pod.
        pod_spec["volumes"].append({"name": "in-sync", "configMap": {
            "name": in_sync_configmap_name(spec.name), "items": [{"key": MIN_IN_SYNC_KEY, "path": MIN_IN_SYNC_KEY}]}})
    _add_placement(pod_spec, spec)
    if spec.topology_spread_constraints:
        pod_spec["topologySpreadConstraints"] = copy.deepcopy(list(spec.topology_spread_constraints))
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _metadata(spec, statefulset_name(spec.name)),
        "spec": {
            "replicas": spec.replicas if replicas is None else replicas,
            "serviceName": peers_service_name(spec.name),
            "selector": {"matchLabels": selector_labels(spec.name)},
            # Peers must all start to elect a leader; ordered start would wait for readiness forever.
            "podManagementPolicy": "Parallel",
            # The operator restarts pods itself: followers first, then the leader after a switchover.
            "updateStrategy": {"type": "OnDelete"},
            # PVCs are deleted by the operator, and only when spec.storage.deleteOnResourceDeletion.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": {
                "metadata": {"labels": {**spec.pod_labels, **labels(spec.name)},
                             "annotations": {**spec.pod_annotations,
                                             CONFIG_HASH_ANNOTATION: config_hash(spec, secrets)}},
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [_pvc_template(spec, "data", NODE_COMPONENT, spec.storage_size)],
        },
    }


def disruption_floor(spec: StoreSpec) -> int:
    """Pods a voluntary eviction must leave: enough for the in-sync set, but never all of them, or a
    node drain could never finish (2 replicas, or minInSync == replicas: writes answer 503 meanwhile)."""
    return min(spec.required_in_sync, spec.replicas - 1)


def pdb_blocks_writes(spec: StoreSpec) -> bool:
    """True when the budget allows evicting a pod the in-sync set needs (see disruption_floor)."""
    return spec.replicas > 1 and disruption_floor(spec) < spec.required_in_sync


def pod_disruption_budget(spec: StoreSpec) -> Manifest:
    """Voluntary evictions must leave enough pods for the in-sync set; a single node cannot be protected
    (minAvailable 0). Always minAvailable: a budget holds it or maxUnavailable, never both, and a scale
    between one and more replicas only changes its value."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _metadata(spec, pdb_name(spec.name)),
            "spec": {"minAvailable": disruption_floor(spec), "selector": {"matchLabels": selector_labels(spec.name)}}}


def service_monitor(spec: StoreSpec) -> Manifest:
    """Prometheus Operator ServiceMonitor scraping every pod through the headless Service."""
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "selector": {"matchLabels": {**selector_labels(spec.name), SERVICE_ROLE_LABEL: "peers"}},
            "namespaceSelector": {"matchNames": [spec.namespace]},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        },
    }


def dashboards_configmap(spec: StoreSpec, dashboards: Mapping[str, str]) -> Manifest:
    """Grafana dashboards (file name -> JSON text) labelled for the Grafana sidecar, each made this store's."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(spec, dashboards_configmap_name(spec.name), extra_labels={DASHBOARD_LABEL: "1"}),
            "data": {name: store_dashboard(spec, name, text) for name, text in dashboards.items()}}


def store_dashboard(spec: StoreSpec, name: str, text: str) -> str:
    """A copy of a dashboard for one store: Grafana keys dashboards by uid, so each store's copy gets its own
    (stable, at most 40 characters) and a title naming the store, and opens on that store."""
    try:
        dashboard = json.loads(text)
    except ValueError:
        return text
    if not isinstance(dashboard, dict):
        return text
    digest = hashlib.sha256(f"{spec.namespace}/{spec.name}/{name}".encode()).hexdigest()[:12]
    dashboard["uid"] = f"{str(dashboard.get('uid') or 'evstore')[:27]}-{digest}"
    dashboard["title"] = f"{dashboard.get('title', name)} ({spec.namespace}/{spec.name})"
    for variable in (dashboard.get("templating") or {}).get("list", []):
        if variable.get("name") in ("store", "namespace"):
            value = spec.name if variable["name"] == "store" else spec.namespace
            variable["current"] = {"selected": True, "text": [value], "value": [value]}
    return json.dumps(dashboard, indent=2)


STORE_ALERTS_GROUP = "evstore.store"
ALL_STORES_SELECTOR = 'job=~".+-peers"'


def prometheus_rule(spec: StoreSpec, rules: Mapping[str, Any]) -> Manifest:
    """The store alerts of the chart's rule file (rules/evstore.rules.yaml, `rules` parsed), narrowed from
    every store to this one."""
    mine = f'namespace="{spec.namespace}", job="{peers_service_name(spec.name)}"'
    groups = []
    for group in rules.get("groups", []):
        if group.get("name") != STORE_ALERTS_GROUP:
            continue
        narrowed = copy.deepcopy(group)
        narrowed["name"] = f"{STORE_ALERTS_GROUP}.{spec.namespace}.{spec.name}"
        for rule in narrowed["rules"]:
            rule["expr"] = rule["expr"].replace(ALL_STORES_SELECTOR, mine)
        groups.append(narrowed)
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": _metadata(spec, spec.name), "spec": {"groups": groups}}


def _peer(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(pod_labels)}}
    if namespace_labels is not None:
        # An empty selector (every namespace) as the API server returns it: {} and not {matchLabels: {}}.
        peer["namespaceSelector"] = {"matchLabels": dict(namespace_labels)} if namespace_labels else {}
    return peer


def network_policy(spec: StoreSpec) -> Manifest:
    """Who may connect to the store's pods: its own pods (replication), the operator, pods labelled
    `evstore.io/client: <store>` in the namespace, and Prometheus (the pods and namespaces the operator's chart
    names; any namespace by default. Metrics share the API port, so the API behind it still needs a token)."""
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _metadata(spec, network_policy_name(spec.name)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec.name)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [_peer(selector_labels(spec.name)), _peer(OPERATOR_POD_LABELS),
                         _peer({CLIENT_LABEL: spec.name}),
                         _peer(spec.prometheus_pod_labels, spec.prometheus_namespace_labels)],
                "ports": [{"protocol": "TCP", "port": NODE_PORT}],
            }],
        },
    }


# ---- managed etcd ------------------------------------------------------------------------------

def etcd_service(spec: StoreSpec) -> Manifest:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _metadata(spec, etcd_name(spec.name), ETCD_COMPONENT),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": selector_labels(spec.name, ETCD_COMPONENT),
                 "ports": [{"name": "client", "port": ETCD_CLIENT_PORT, "targetPort": "client", "protocol": "TCP"},
                           {"name": "peer", "port": ETCD_PEER_PORT, "targetPort": "peer", "protocol": "TCP"}]},
    }


def etcd_args(spec: StoreSpec) -> list[str]:
    name = etcd_name(spec.name)
    domain = f"{name}.{spec.namespace}.svc"
    initial = ",".join(f"{name}-{i}=http://{name}-{i}.{domain}:{ETCD_PEER_PORT}" for i in range(ETCD_MEMBERS))
    return [
        "--name=$(POD_NAME)",
        "--data-dir=/var/lib/etcd/data",
        f"--listen-client-urls=http://0.0.0.0:{ETCD_CLIENT_PORT}",
        f"--listen-peer-urls=http://0.0.0.0:{ETCD_PEER_PORT}",
        f"--advertise-client-urls=http://$(POD_NAME).{domain}:{ETCD_CLIENT_PORT}",
        f"--initial-advertise-peer-urls=http://$(POD_NAME).{domain}:{ETCD_PEER_PORT}",
        f"--initial-cluster={initial}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token={spec.namespace}-{name}",
        # Leader, member and ISR keys are rewritten all the time: without compaction the history
        # grows until the backend quota stops every write.
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=1h",
        f"--quota-backend-bytes={ETCD_QUOTA_BYTES}",
    ] + ([
        # Signed tokens (the default "simple" ones are guessable); the key comes from the Secret.
        f"--auth-token=jwt,priv-key={ETCD_AUTH_DIR}/jwt.key,sign-method=HS256,ttl=10m",
    ] if spec.etcd_auth else [])


def etcd_statefulset(spec: StoreSpec) -> Manifest:
    container = {
        "name": "etcd",
        "image": spec.etcd_image,
        "command": ["etcd"],
        "args": etcd_args(spec),
        "env": [_field_env("POD_NAME", "metadata.name")],
        "ports": [{"name": "client", "containerPort": ETCD_CLIENT_PORT, "protocol": "TCP"},
                  {"name": "peer", "containerPort": ETCD_PEER_PORT, "protocol": "TCP"}],
        # Liveness must not depend on quorum, or losing quorum would restart every member.
        "livenessProbe": {"tcpSocket": {"port": "client"}, "periodSeconds": 10, "failureThreshold": 6},
        "readinessProbe": {"httpGet": {"path": "/health", "port": "client"}, "periodSeconds": 5,
                           "failureThreshold": 3},
        "volumeMounts": [{"name": "etcd-data", "mountPath": "/var/lib/etcd"}]
                        + ([{"name": "etcd-auth", "mountPath": ETCD_AUTH_DIR, "readOnly": True}]
                           if spec.etcd_auth else []),
        "resources": copy.deepcopy(dict(spec.etcd_resources)),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    pod_spec: dict[str, Any] = {
        "securityContext": _pod_security_context(),
        "automountServiceAccountToken": False,
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": selector_labels(spec.name, ETCD_COMPONENT)}},
        }]}},
        "containers": [container],
        "enableServiceLinks": False,
    }
    if spec.etcd_auth:
        pod_spec["volumes"] = [{"name": "etcd-auth", "secret": {
            "secretName": etcd_auth_secret_name(spec.name), "defaultMode": 0o440,
            "items": [{"key": ETCD_JWT_KEY, "path": "jwt.key"}]}}]
    _add_placement(pod_spec, spec)
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _metadata(spec, etcd_name(spec.name), ETCD_COMPONENT),
        "spec": {
            "replicas": ETCD_MEMBERS,
            "serviceName": etcd_name(spec.name),
            "selector": {"matchLabels": selector_labels(spec.name, ETCD_COMPONENT)},
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": labels(spec.name, ETCD_COMPONENT)}, "spec": pod_spec},
            "volumeClaimTemplates": [_pvc_template(spec, "etcd-data", ETCD_COMPONENT, ETCD_VOLUME_SIZE)],
        },
    }


def etcd_network_policy(spec: StoreSpec) -> Manifest:
    """The managed etcd answers the store's nodes and the operator on the client port, its members on both."""
    etcd = selector_labels(spec.name, ETCD_COMPONENT)
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _metadata(spec, etcd_name(spec.name), ETCD_COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": etcd},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [_peer(etcd)], "ports": [{"protocol": "TCP", "port": ETCD_CLIENT_PORT},
                                                  {"protocol": "TCP", "port": ETCD_PEER_PORT}]},
                {"from": [_peer(selector_labels(spec.name)), _peer(OPERATOR_POD_LABELS)],
                 "ports": [{"protocol": "TCP", "port": ETCD_CLIENT_PORT}]},
            ],
        },
    }


def etcd_pod_disruption_budget(spec: StoreSpec) -> Manifest:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _metadata(spec, etcd_name(spec.name), ETCD_COMPONENT),
            "spec": {"minAvailable": ETCD_MEMBERS // 2 + 1,
                     "selector": {"matchLabels": selector_labels(spec.name, ETCD_COMPONENT)}}}


# ---- what to apply -----------------------------------------------------------------------------

def desired_children(spec: StoreSpec, *, dashboards: Mapping[str, str] | None = None,
                     alert_rules: Mapping[str, Any] | None = None, secrets: str = "",
                     replicas: int | None = None) -> list[Manifest]:
    """Every child the store needs except the generated Secrets (their values are random, see
    cluster_secret and api_tokens_secret) and the in-sync ConfigMap (its value follows the cluster)."""
    children = [configmap(spec), network_policy(spec), peers_service(spec), client_service(spec)]
    if spec.etcd_managed:
        children += [etcd_network_policy(spec), etcd_service(spec), etcd_statefulset(spec),
                     etcd_pod_disruption_budget(spec)]
    children += [statefulset(spec, secrets=secrets, replicas=replicas), pod_disruption_budget(spec)]
    if spec.service_monitor:
        children.append(service_monitor(spec))
        if alert_rules:
            children.append(prometheus_rule(spec, alert_rules))
    if spec.dashboards and dashboards:
        children.append(dashboards_configmap(spec, dashboards))
    return children


# Fields that may be patched on an existing object. Others are immutable (StatefulSet selector,
# serviceName, volumeClaimTemplates; Service clusterIP) or owned by the user (generated Secret value).
MUTABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "ConfigMap": ("data",),
    "Secret": (),
    "Service": ("spec.selector", "spec.ports", "spec.publishNotReadyAddresses"),
    "StatefulSet": ("spec.replicas", "spec.template", "spec.updateStrategy",
                    "spec.persistentVolumeClaimRetentionPolicy"),
    "PodDisruptionBudget": ("spec",),
    "NetworkPolicy": ("spec",),
    "ServiceMonitor": ("spec",),
    "PrometheusRule": ("spec",),
}
# Keys of fields the operator owns, with nothing the API server fills in: one there that the operator does not
# set is removed, whoever set it (None: any key). A budget holds minAvailable or maxUnavailable, never both.
OWNED_KEYS: dict[tuple[str, str], frozenset[str] | None] = {
    ("PodDisruptionBudget", "spec"): frozenset({"minAvailable", "maxUnavailable"}), ("ConfigMap", "data"): None}
# What the operator last applied of an object's mutable fields (as kubectl apply keeps
# last-applied-configuration): a key it set then and no longer sets is removed, not left behind; keys the
# API server or someone else added are left alone.
LAST_APPLIED_ANNOTATION = "evstore.io/last-applied"


def last_applied(desired: Manifest) -> str:
    """The text recorded in LAST_APPLIED_ANNOTATION for `desired`: its mutable fields (but those of OWNED_KEYS:
    removals there need no record, and a dashboards ConfigMap's data would double the object)."""
    fields = {path: _get(desired, path) for path in MUTABLE_FIELDS.get(desired["kind"], ())
              if (desired["kind"], path) not in OWNED_KEYS}
    return json.dumps({k: v for k, v in fields.items() if v is not None}, sort_keys=True, separators=(",", ":"))


def stamped(desired: Manifest) -> Manifest:
    """A copy of `desired` carrying LAST_APPLIED_ANNOTATION, as created."""
    result = copy.deepcopy(desired)
    if MUTABLE_FIELDS.get(desired["kind"]):
        annotations = result["metadata"].setdefault("annotations", {})
        annotations[LAST_APPLIED_ANNOTATION] = last_applied(desired)
    return result


def foreign_owner(desired: Manifest, actual: Mapping[str, Any]) -> str | None:
    """Why `actual` (an object of the desired kind and name) is not ours to patch, or None if it is:
    ours when its controller reference is the desired one, or, with no controller, when it carries our
    labels for this store (an orphan of ours, e.g. after `kubectl delete --cascade=orphan`)."""
    meta = actual.get("metadata") or {}
    mine = next(r for r in desired["metadata"]["ownerReferences"] if r.get("controller"))
    controller = next((r for r in meta.get("ownerReferences") or () if r.get("controller")), None)
    what = f"{desired['kind']} {desired['metadata']['name']}"
    if controller is not None:
        if controller.get("uid") == mine["uid"]:
            return None
        return f"{what} exists and belongs to {controller.get('kind')} {controller.get('name')}"
    found = meta.get("labels") or {}
    if all(found.get(k) == v for k, v in desired["metadata"]["labels"].items()
           if k in ("app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/component")):
        return None
    return f"{what} exists and is not managed by the evstore operator for this store"


def patch_for(desired: Manifest, actual: Mapping[str, Any]) -> Manifest | None:
    """A merge patch bringing `actual` to `desired` (metadata labels/owners + mutable fields), or None.
    A mutable field is patched when `actual` lacks some of it, when it differs from what the operator last
    applied (LAST_APPLIED_ANNOTATION), or when it holds keys the operator set then or owns (OWNED_KEYS) and no
    longer sets: those get null, which removes them."""
    patch: dict[str, Any] = {}
    meta_patch: dict[str, Any] = {}
    desired_meta, actual_meta = desired["metadata"], actual.get("metadata", {})
    if not is_subset(desired_meta.get("labels", {}), actual_meta.get("labels") or {}):
        meta_patch["labels"] = desired_meta.get("labels", {})
    if desired_meta.get("ownerReferences") and not is_subset(desired_meta["ownerReferences"],
                                                             actual_meta.get("ownerReferences") or []):
        meta_patch["ownerReferences"] = desired_meta["ownerReferences"]
    recorded_text = (actual_meta.get("annotations") or {}).get(LAST_APPLIED_ANNOTATION)
    recorded = _recorded(recorded_text)
    for path in MUTABLE_FIELDS.get(desired["kind"], ()):
        want, have = _get(desired, path), _get(actual, path)
        if want is None:
            continue
        if (desired["kind"], path) in OWNED_KEYS:
            owned = OWNED_KEYS[desired["kind"], path]
            before = {k: v for k, v in have.items() if owned is None or k in owned} if isinstance(have, Mapping) else {}
        else:
            before = recorded.get(path)
        removed = _removals(before, want, have)
        # a list the operator changed (containers without their resources) is replaced whole
        changed = path in recorded and recorded[path] != want
        if removed or changed or not is_subset(want, have):
            _set(patch, path, _merge(want, removed))
    applied = last_applied(desired)
    if MUTABLE_FIELDS.get(desired["kind"]) and (patch or recorded_text != applied):
        meta_patch["annotations"] = {LAST_APPLIED_ANNOTATION: applied}
    if meta_patch:
        patch["metadata"] = meta_patch
    return patch or None


def _recorded(text: str | None) -> dict[str, Any]:
    try:
        recorded = json.loads(text) if text else {}
    except ValueError:
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _removals(before: Any, want: Any, have: Any) -> dict[str, Any]:
    """The keys of `before` that `want` no longer has and `have` still has, as a merge patch of nulls
    (nested: a map in all three is compared key by key; lists are replaced whole by any patch)."""
    if not (isinstance(before, Mapping) and isinstance(want, Mapping) and isinstance(have, Mapping)):
        return {}
    removed: dict[str, Any] = {}
    for key, value in before.items():
        if key not in have:
            continue
        if key not in want:
            removed[key] = None
        elif inner := _removals(value, want[key], have[key]):
            removed[key] = inner
    return removed


def _merge(want: Any, removed: Mapping[str, Any]) -> Any:
    """`want` with the nulls of `removed` added (a merge patch that sets `want` and removes the rest)."""
    if not removed:
        return copy.deepcopy(want)
    result = copy.deepcopy(dict(want))
    for key, value in removed.items():
        result[key] = None if value is None else _merge(want[key], value)
    return result


# Maps whose values are resource quantities, which the API server rewrites in canonical form
# ("0.5" -> "500m", "1024Mi" -> "1Gi", 2 -> "2").
QUANTITY_MAPS = frozenset({"requests", "limits", "capacity"})


def is_subset(want: Any, have: Any, *, quantities: bool = False) -> bool:
    """True when everything in `want` is in `have` (the API server adds defaults, so `have` may hold
    more, and canonicalises quantities, so they are compared by value)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and is_subset(v, have[k], quantities=quantities or k in QUANTITY_MAPS)
            for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(is_subset, want, have))
    if quantities:
        return same_quantity(want, have)
    if isinstance(want, (int, float)) and isinstance(have, str) or isinstance(want, str) and isinstance(have, int):
        return str(want) == str(have)
    return want == have


def same_quantity(a: Any, b: Any) -> bool:
    try:
        return parse_quantity(a) == parse_quantity(b)
    except ValueError:
        return a == b


def _get(obj: Mapping[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj.setdefault(part, {})
    obj[last] = copy.deepcopy(value)


def _add_placement(pod_spec: dict[str, Any], spec) -> None:
    """The store's tolerations, node selector, priority class and image pull secrets apply to its
    nodes and its managed etcd alike."""
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    if spec.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(list(spec.tolerations))
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
