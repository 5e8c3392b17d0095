"""The EventStore spec as the operator uses it: parsed from the resource, defaults applied, validated.

The CRD schema already defaults and validates what a structural schema can express; this module
re-applies the same defaults (so resources created before a CRD upgrade still work) and adds the
rules a schema cannot express (derived defaults such as `etcd.managed`, name length limits).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from evstore.operator.quantity import parse_quantity

GROUP = "evstore.io"
VERSION = "v1alpha1"
PLURAL = "eventstores"
KIND = "EventStore"
API_VERSION = f"{GROUP}/{VERSION}"

NODE_PORT = 7113
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_MEMBERS = 3
DATA_DIR = "/data"
CLUSTER_SECRET_KEY = "secret"
# The API tokens Secret: one key per role holding that role's token (what applications mount), and
# TOKENS_FILE_KEY holding the node's --api-tokens-file ("TOKEN ROLE" lines).
TOKEN_ROLES = ("admin", "write", "read")
TOKENS_FILE_KEY = "api-tokens"

DEFAULT_IMAGE = "ghcr.io/evstore/evstore:0.1.0"
DEFAULT_ETCD_IMAGE = "gcr.io/etcd-development/etcd:v3.5.17"
DEFAULT_STORAGE_SIZE = "1Gi"
# kube-prometheus-stack labels its Prometheus pods so
DEFAULT_PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}
DEFAULT_ETCD_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
DURABILITY_MODES = ("sync", "interval")
LOG_LEVELS = ("debug", "info", "warning", "error")
MIN_REPLICAS, MAX_REPLICAS = 1, 9

# Children are named <store>-<suffix>; a store whose name ends like that would take the children of
# another store ("orders-etcd" is the etcd Service of "orders"), so such names are refused.
RESERVED_NAME_SUFFIXES = ("-etcd", "-peers")

# The StatefulSet name ends up in the pod's controller-revision-hash label (max 63 characters, the
# hash takes 11), and "<name>-etcd" is a StatefulSet too: 63 - 11 - len("-etcd") = 47.
MAX_NAME_LENGTH = 47
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class SpecError(ValueError):
    """The resource asks for something the operator cannot build. Not retried until the spec changes."""


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclass(frozen=True)
class StoreSpec:
    name: str
    namespace: str
    replicas: int = 1
    image: str = DEFAULT_IMAGE
    image_pull_policy: str | None = None
    storage_size: str = DEFAULT_STORAGE_SIZE
    storage_class: str | None = None
    delete_pvcs_on_deletion: bool = False
    resources: Mapping[str, Any] = field(default_factory=dict)
    affinity: Mapping[str, Any] | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    priority_class_name: str | None = None
    topology_spread_constraints: tuple[Mapping[str, Any], ...] = ()
    image_pull_secrets: tuple[str, ...] = ()
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    etcd_resources: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_ETCD_RESOURCES))
    etcd_endpoints: tuple[str, ...] = ()
    etcd_managed: bool = False
    etcd_image: str = DEFAULT_ETCD_IMAGE
    etcd_auth: bool = False  # the managed etcd enforces users (see reconcile.ensure_etcd_auth)
    cluster_secret_ref: SecretRef | None = None
    tokens_secret_name: str | None = None
    # The node's --store-id (its etcd key prefix); see store_identity. Set by the handler to the id
    # a running store already uses, which never changes (its nodes would split under two prefixes).
    store_id: str = ""
    durability_mode: str = "sync"
    sync_interval: float | None = None
    min_in_sync: int | None = None
    max_body_bytes: int | None = None
    service_monitor: bool = False
    dashboards: bool = False
    log_level: str = "info"
    # who may scrape /metrics (the operator's setting, from its chart): pod labels, namespace labels ({}: any)
    prometheus_pod_labels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PROMETHEUS_POD_LABELS))
    prometheus_namespace_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def secret_ref(self) -> SecretRef:
        """Where the cluster secret lives: the user's Secret, or the one the operator generates."""
        return self.cluster_secret_ref or SecretRef(generated_secret_name(self.name), CLUSTER_SECRET_KEY)

    @property
    def node_store_id(self) -> str:
        return self.store_id or store_identity(self.namespace, self.name)

    @property
    def tokens_secret(self) -> str:
        """The Secret with the API tokens: the user's (spec.auth.tokensSecretRef), or the generated one."""
        return self.tokens_secret_name or generated_tokens_secret_name(self.name)

    @property
    def required_in_sync(self) -> int:
        """In-sync replicas the store needs to accept writes: minInSync, or a majority of the replicas."""
        return self.min_in_sync if self.min_in_sync is not None else majority(self.replicas)

    @property
    def etcd_enabled(self) -> bool:
        return bool(self.etcd_endpoints) or self.etcd_managed


def majority(replicas: int) -> int:
    return replicas // 2 + 1


def generated_secret_name(store: str) -> str:
    return f"{store}-cluster-secret"


def store_identity(namespace: str, name: str) -> str:
    """Unique in the Kubernetes cluster (neither part may contain a '.'), so stores named alike in
    two namespaces never share etcd keys."""
    return f"{namespace}.{name}"


def generated_tokens_secret_name(store: str) -> str:
    return f"{store}-api-tokens"


def default_image() -> str:
    """The node image when spec.image is empty: the chart sets EVSTORE_NODE_IMAGE to its own image."""
    return os.environ.get("EVSTORE_NODE_IMAGE") or DEFAULT_IMAGE


def prometheus_selectors() -> tuple[dict[str, str], dict[str, str]]:
    """The pod and namespace labels of the Prometheus the stores' NetworkPolicies admit: the chart sets
    EVSTORE_PROMETHEUS_POD_LABELS and EVSTORE_PROMETHEUS_NAMESPACE_LABELS (JSON maps; no namespace labels: any
    namespace) from its networkPolicy values."""
    pods = _label_map("EVSTORE_PROMETHEUS_POD_LABELS", DEFAULT_PROMETHEUS_POD_LABELS)
    if not pods:  # every pod of every namespace: no policy at all
        raise SpecError("the operator's EVSTORE_PROMETHEUS_POD_LABELS names no label: it would admit every pod to "
                        "the stores")
    return pods, _label_map("EVSTORE_PROMETHEUS_NAMESPACE_LABELS", {})


def _label_map(variable: str, default: Mapping[str, str]) -> dict[str, str]:
    text = os.environ.get(variable, "").strip()
    if not text:
        return dict(default)
    try:
        value = json.loads(text)
    except ValueError:
        raise SpecError(f"the operator's {variable} is not a JSON object of labels") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SpecError(f"the operator's {variable} is not a JSON object of labels")
    _check_labels(value, f"the operator's {variable}")
    return value


def default_etcd_image() -> str:
    return os.environ.get("EVSTORE_ETCD_IMAGE") or DEFAULT_ETCD_IMAGE


def parse_spec(name: str, namespace: str, spec: Mapping[str, Any] | None, *,
               image: str | None = None, etcd_image: str | None = None) -> StoreSpec:
    """Build a StoreSpec from `.spec` of an EventStore, applying defaults; raise SpecError when invalid."""
    spec = spec or {}
    if not _DNS_LABEL.match(name) or len(name) > MAX_NAME_LENGTH:
        raise SpecError(f"metadata.name {name!r} must be a DNS label (a-z, 0-9, '-', starting with a letter) "
                        f"of at most {MAX_NAME_LENGTH} characters")
    if name.endswith(RESERVED_NAME_SUFFIXES):
        raise SpecError(f"metadata.name {name!r} must not end with {' or '.join(RESERVED_NAME_SUFFIXES)}: "
                        f"those names belong to the children of the store {name.rsplit('-', 1)[0]!r}")

    replicas = _int(spec.get("replicas", 1), "spec.replicas")
    if not MIN_REPLICAS <= replicas <= MAX_REPLICAS:
        raise SpecError(f"spec.replicas must be between {MIN_REPLICAS} and {MAX_REPLICAS}, got {replicas}")

    storage = spec.get("storage") or {}
    scheduling = spec.get("scheduling") or {}
    etcd = spec.get("etcd") or {}
    durability = spec.get("durability") or {}
    monitoring = spec.get("monitoring") or {}

    endpoints = tuple(str(e) for e in etcd.get("endpoints") or ())
    managed = etcd.get("managed")
    if managed is None:
        # Clustered even at one replica: scaling then only adds followers to a leader holding the log.
        managed = not endpoints
    if managed and endpoints:
        raise SpecError("spec.etcd: give either endpoints or managed: true, not both")
    if replicas > 1 and not (managed or endpoints):
        raise SpecError("spec.etcd: more than one replica needs etcd (endpoints or managed: true)")

    mode = durability.get("mode", "sync")
    if mode not in DURABILITY_MODES:
        raise SpecError(f"spec.durability.mode must be one of {', '.join(DURABILITY_MODES)}, got {mode!r}")
    min_in_sync = durability.get("minInSync")
    if min_in_sync is not None:
        min_in_sync = _int(min_in_sync, "spec.durability.minInSync")
        if not 1 <= min_in_sync <= replicas:
            raise SpecError(f"spec.durability.minInSync must be between 1 and spec.replicas ({replicas}), "
                            f"got {min_in_sync}")
    sync_interval = durability.get("syncInterval")

    log_level = spec.get("logLevel", "info")
    if log_level not in LOG_LEVELS:
        raise SpecError(f"spec.logLevel must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")

    secret_ref = None
    if ref := spec.get("clusterSecretRef"):
        if not ref.get("name"):
            raise SpecError("spec.clusterSecretRef.name is required")
        secret_ref = SecretRef(str(ref["name"]), str(ref.get("key") or CLUSTER_SECRET_KEY))

    tokens_secret = None
    if tokens_ref := (spec.get("auth") or {}).get("tokensSecretRef"):
        if not tokens_ref.get("name"):
            raise SpecError("spec.auth.tokensSecretRef.name is required")
        tokens_secret = str(tokens_ref["name"])

    pod = spec.get("podMetadata") or {}
    prometheus = prometheus_selectors()
    # what the API server would refuse in the pods' template is refused here, where the message is clear
    for field_name, resources in (("spec.resources", spec.get("resources")), ("spec.etcd.resources",
                                                                              etcd.get("resources"))):
        _check_resources(resources or {}, field_name)
    _check_quantity(storage.get("size") or DEFAULT_STORAGE_SIZE, "spec.storage.size")
    _check_labels(pod.get("labels") or {}, "spec.podMetadata.labels")
    return StoreSpec(
        name=name,
        namespace=namespace,
        replicas=replicas,
        image=spec.get("image") or image or default_image(),
        image_pull_policy=spec.get("imagePullPolicy"),
        storage_size=str(storage.get("size") or DEFAULT_STORAGE_SIZE),
        storage_class=storage.get("storageClassName"),
        delete_pvcs_on_deletion=bool(storage.get("deleteOnResourceDeletion", False)),
        resources=dict(spec.get("resources") or {}),
        affinity=scheduling.get("affinity"),
        tolerations=tuple(scheduling.get("tolerations") or ()),
        node_selector=dict(scheduling.get("nodeSelector") or {}),
        priority_class_name=scheduling.get("priorityClassName") or None,
        topology_spread_constraints=tuple(scheduling.get("topologySpreadConstraints") or ()),
        image_pull_secrets=tuple(str(s["name"]) for s in spec.get("imagePullSecrets") or () if s.get("name")),
        pod_labels={str(k): str(v) for k, v in (pod.get("labels") or {}).items()},
        pod_annotations={str(k): str(v) for k, v in (pod.get("annotations") or {}).items()},
        etcd_resources=dict(etcd.get("resources") or DEFAULT_ETCD_RESOURCES),
        etcd_endpoints=endpoints,
        etcd_managed=bool(managed),
        etcd_auth=bool(managed) and etcd.get("auth", True) is not False,
        etcd_image=etcd.get("image") or etcd_image or default_etcd_image(),
        cluster_secret_ref=secret_ref,
        tokens_secret_name=tokens_secret,
        durability_mode=mode,
        sync_interval=float(sync_interval) if sync_interval is not None else None,
        min_in_sync=min_in_sync,
        max_body_bytes=_int(spec["maxBodyBytes"], "spec.maxBodyBytes") if spec.get("maxBodyBytes") else None,
        service_monitor=bool(monitoring.get("serviceMonitor", False)),
        dashboards=bool(monitoring.get("dashboards", False)),
        log_level=log_level,
        prometheus_pod_labels=prometheus[0],
        prometheus_namespace_labels=prometheus[1],
    )


# a label value: up to 63 characters of alphanumerics, '-', '_' and '.', starting and ending alphanumeric (or empty)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                         r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _check_quantity(value: Any, field_name: str) -> None:
    try:
        parse_quantity(value)
    except ValueError:
        raise SpecError(f"{field_name} must be a Kubernetes quantity (e.g. 500m, 1Gi), got {value!r}") from None


def _check_resources(resources: Mapping[str, Any], field_name: str) -> None:
    for kind in ("requests", "limits"):
        for resource, value in (resources.get(kind) or {}).items():
            _check_quantity(value, f"{field_name}.{kind}.{resource}")


def _check_labels(labels: Mapping[str, Any], field_name: str) -> None:
    for key, value in labels.items():
        if not (isinstance(key, str) and _LABEL_NAME.match(key) and len(key.rsplit("/", 1)[0]) <= 253):
            raise SpecError(f"{field_name}: {key!r} is not a valid label name")
        if not (isinstance(value, str) and _LABEL_VALUE.match(value)):
            raise SpecError(f"{field_name}.{key} must be a label value (at most 63 letters, digits, '-', '_' or "
                            f"'.', starting and ending with a letter or digit), got {value!r}")


def _int(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{field_name} must be an integer, got {value!r}")
    return value
