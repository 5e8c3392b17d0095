"""The EventStore CRD: valid for Kubernetes, structural, and the examples validate against its schema."""
from __future__ import annotations

import copy
import pathlib

import kubernetes_validate
import pytest
import yaml
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator

from evstore.operator.spec import parse_spec

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "eventstore.yaml"
CHART_CRD_PATH = ROOT / "charts" / "evstore-operator" / "crds" / "eventstore.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
K8S_VERSIONS = ["1.30.0", "1.33.0"]


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def validator(crd) -> OAS30Validator:
    return OAS30Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def eventstores() -> list[tuple[str, dict]]:
    return [(f"{p.name}#{i}", doc) for p in EXAMPLES for i, doc in enumerate(yaml.safe_load_all(p.read_text()))
            if doc and doc.get("kind") == "EventStore"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crd_passes_kubernetes_validate_strict(crd, version):
    kubernetes_validate.validate(crd, version, strict=True)


def test_crd_names_subresources_and_columns(crd):
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "eventstores.evstore.io"
    assert spec["names"]["shortNames"] == ["evs"] and spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas",
                                                "statusReplicasPath": ".status.readyReplicas",
                                                "labelSelectorPath": ".status.selector"}
    shown = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert shown == ["Replicas", "Ready", "Leader", "Phase", "Age"]


def _untyped_paths(schema: dict, path: str = "") -> list[str]:
    """Structural schema: every node has a type, unless it is int-or-string or preserves unknown fields."""
    missing = []
    if not (schema.get("type") or schema.get("x-kubernetes-int-or-string")
            or schema.get("x-kubernetes-preserve-unknown-fields")):
        missing.append(path or "/")
    for name, sub in (schema.get("properties") or {}).items():
        missing += _untyped_paths(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        missing += _untyped_paths(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        missing += _untyped_paths(schema["additionalProperties"], f"{path}{{}}")
    return missing


def test_crd_schema_is_structural(crd):
    assert _untyped_paths(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) == []


def test_chart_carries_the_same_crd_file():
    assert CHART_CRD_PATH.read_bytes() == CRD_PATH.read_bytes()


def test_there_are_examples_of_each_kind():
    names = {doc["metadata"]["name"]: doc["spec"] for _, doc in eventstores()}
    assert len(names) >= 3
    specs = list(names.values())
    assert any(not s.get("replicas") for s in specs), "a minimal single-node example"
    assert any(s.get("etcd", {}).get("managed") for s in specs), "a managed etcd example"
    assert any(s.get("etcd", {}).get("endpoints") and s.get("monitoring") for s in specs), \
        "an external etcd example with monitoring"


@pytest.mark.parametrize("label,resource", eventstores(), ids=lambda v: v if isinstance(v, str) else "")
def test_example_validates_against_crd_schema_and_operator(validator, label, resource):
    validator.validate(resource)
    parsed = parse_spec(resource["metadata"]["name"], "default", resource["spec"])
    assert parsed.replicas == resource["spec"].get("replicas", 1)


def _minimal(**spec) -> dict:
    return {"apiVersion": "evstore.io/v1alpha1", "kind": "EventStore", "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize("spec", [
    {"replicas": 0},
    {"replicas": 10},
    {"replicas": "3"},
    {"durability": {"mode": "async"}},
    {"durability": {"minInSync": 0}},
    {"logLevel": "verbose"},
    {"storage": {"size": "lots"}},
    {"etcd": {"endpoints": ["etcd-0:2379"]}},
    {"clusterSecretRef": {"key": "secret"}},
    {"auth": {"tokensSecretRef": {}}},
    {"imagePullSecrets": [{}]},
    {"etcd": {"auth": "yes"}},
    {"podMetadata": {"labels": {"a": 1}}},
    {"auth": {"tokensSecretRef": {"name": ""}}},
    {"monitoring": {"serviceMonitor": "yes"}},
])
def test_invalid_resources_are_rejected(validator, spec):
    with pytest.raises(Exception) as caught:
        validator.validate(_minimal(**spec))
    assert type(caught.value).__name__ == "ValidationError"


def test_valid_bounds_are_accepted(validator):
    validator.validate(_minimal(replicas=1))
    validator.validate(_minimal(replicas=9, durability={"mode": "interval", "minInSync": 5}))
    validator.validate(_minimal(auth={"tokensSecretRef": {"name": "my-tokens"}}))
    pod_settings = dict(imagePullSecrets=[{"name": "registry"}],
                        podMetadata={"labels": {"team": "a"}, "annotations": {"x/y": "z"}},
                        scheduling={"priorityClassName": "high", "topologySpreadConstraints": [{"maxSkew": 1}]},
                        etcd={"managed": True, "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": 1}}})
    validator.validate(_minimal(replicas=3, **pod_settings))
    parse_spec("x", "default", pod_settings | {"replicas": 3})


def test_status_schema_accepts_what_the_operator_writes(validator):
    resource = copy.deepcopy(_minimal(replicas=3))
    resource["status"] = {
        "phase": "Ready", "message": "leader x-0", "observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
        "selector": "a=b", "leader": "x-0", "epoch": 4, "lastPosition": 10, "inSyncReplicas": ["x-0"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "StoreReady", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}],
    }
    validator.validate(resource)
    resource["status"]["phase"] = "Sleeping"
    with pytest.raises(ValidationError, match="Sleeping"):
        validator.validate(resource)


def test_crd_refuses_the_names_the_operator_reserves(crd):
    from evstore.operator.spec import RESERVED_NAME_SUFFIXES
    [rule] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert rule["rule"] == " && ".join(f"!self.metadata.name.endsWith('{s}')" for s in RESERVED_NAME_SUFFIXES)
