"""Secret lifecycle (issue 10, point 7), with the real kopf operator against kmock.

kmock runs no StatefulSet controller: that the pods restart when the template's config hash changes
is the OnDelete roll the other tests cover; here the hash itself is checked.
"""
from __future__ import annotations

import base64
import logging

from evs_helpers import (EVS, NAMESPACE, STS, api, create_evs, events, eventually, get_object, patch_evs,
                         simulate_statefulset_ready, token_for)

HASH = "evstore.io/config-hash"


def _hash(k8s):
    return get_object(k8s, STS, "orders")["spec"]["template"]["metadata"]["annotations"][HASH]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_a_changed_secret_value_changes_the_pod_template(k8s, operator):
    await create_evs(k8s, "orders")
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    first = _hash(k8s)
    rotated = f"new-admin-token-0123456789 admin\n{token_for('write')} write\n{token_for('read')} read\n"
    await api(k8s, "PATCH", f"/api/v1/namespaces/{NAMESPACE}/secrets/orders-api-tokens",
              {"data": {"api-tokens": _b64(rotated), "admin": _b64("new-admin-token-0123456789")}})
    await eventually(lambda: _hash(k8s) != first, what="a new config hash after the token rotation")
    second = _hash(k8s)
    await api(k8s, "PATCH", f"/api/v1/namespaces/{NAMESPACE}/secrets/orders-cluster-secret",
              {"data": {"secret": _b64("another-cluster-secret-0123")}})
    await eventually(lambda: _hash(k8s) not in (first, second), what="a new config hash after the secret change")
    # The digest in the annotation does not carry the value.
    assert "another-cluster-secret" not in str(get_object(k8s, STS, "orders"))


async def test_a_deleted_generated_secret_is_not_silently_regenerated(k8s, operator, nodes):
    await create_evs(k8s, "orders")
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    nodes.set_cluster("orders", leader_ordinal=0, replicas=1)
    await simulate_statefulset_ready(k8s, "orders")
    await eventually(lambda: get_object(k8s, EVS, "orders")["status"].get("phase") == "Ready", what="Ready")
    template = get_object(k8s, STS, "orders")["spec"]["template"]

    await api(k8s, "DELETE", f"/api/v1/namespaces/{NAMESPACE}/secrets/orders-cluster-secret")
    status = await eventually(lambda: (s := get_object(k8s, EVS, "orders")["status"])["phase"] == "Degraded"
                              and s, what="phase Degraded")
    assert "orders-cluster-secret was deleted" in status["message"]
    warning = (await eventually(lambda: events(k8s, "orders", "SecretMissing"), what="SecretMissing"))[0]
    assert warning["type"] == "Warning"
    await patch_evs(k8s, "orders", {"spec": {"logLevel": "debug"}})  # a reconcile pass meanwhile
    await eventually(lambda: get_object(k8s, "v1/configmaps", "orders-config")["data"]["EVSTORE_LOG_LEVEL"]
                     == "debug", what="the other children still reconciled")
    assert get_object(k8s, "v1/secrets", "orders-cluster-secret") is None
    assert get_object(k8s, STS, "orders")["spec"]["template"] == template, "the running pods were kept"

    await patch_evs(k8s, "orders", {"metadata": {"annotations": {"evstore.io/regenerate-secrets": "true"}}})
    await eventually(lambda: get_object(k8s, "v1/secrets", "orders-cluster-secret"), what="regenerated")
    await eventually(lambda: "evstore.io/regenerate-secrets" not in
                     (get_object(k8s, EVS, "orders")["metadata"].get("annotations") or {}), what="annotation removed")
    # The log level change held back meanwhile now reaches the template: play the controller's roll.
    await eventually(lambda: get_object(k8s, STS, "orders")["spec"]["template"] != template, what="new template")
    await simulate_statefulset_ready(k8s, "orders", revision="rev-2")
    await eventually(lambda: get_object(k8s, EVS, "orders")["status"]["phase"] == "Ready", what="Ready again")


async def test_no_secret_value_is_logged_or_posted(k8s, operator, nodes, caplog):
    caplog.set_level(logging.DEBUG)
    await create_evs(k8s, "orders", replicas=3, auth={"tokensSecretRef": {"name": "mine"}})
    await eventually(lambda: events(k8s, "orders", "InvalidSpec"), what="InvalidSpec (tokens Secret missing)")
    await api(k8s, "POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine"},
        "stringData": {"admin": "bad-admin-value-0123456789", "api-tokens": "short admin\n"}})
    await eventually(lambda: any("line 1" in e["message"] for e in events(k8s, "orders", "InvalidSpec")),
                     timeout=30, what="the tokens file refused (the node would not start with it)")
    await api(k8s, "PATCH", f"/api/v1/namespaces/{NAMESPACE}/secrets/mine", {"data": {
        "api-tokens": base64.b64encode(b"bad-admin-value-0123456789 admin\n").decode()}})
    await eventually(lambda: get_object(k8s, STS, "orders"), timeout=30, what="statefulset")
    nodes.set_cluster("orders", leader_ordinal=0, replicas=3)
    await simulate_statefulset_ready(k8s, "orders")
    await eventually(lambda: get_object(k8s, EVS, "orders")["status"].get("phase") in ("Ready", "Degraded",
                                                                                       "Unavailable"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    posted = str(events(k8s, "orders"))
    for value in ("generated-test-secret", "bad-admin-value-0123456789", "short admin"):
        assert value not in text and value not in posted, value
