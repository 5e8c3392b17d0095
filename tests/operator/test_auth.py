"""Closed by default (issue 10, point 3), with the real kopf operator against kmock.

Every store gets an API tokens Secret (generated, or the user's `spec.auth.tokensSecretRef`) mounted
as the node's --api-tokens-file, and a NetworkPolicy; the operator calls the nodes with the admin
token (the fake nodes answer 401 to anything else, as a node started with the tokens file does).
"""
from __future__ import annotations

from evstore.operator.kube import secret_values
from evs_helpers import EVS, NAMESPACE, STS, api, create_evs, events, eventually, get_object, token_for

NETPOL = "networking.k8s.io/v1/networkpolicies"


async def test_generated_tokens_are_mounted_and_used_by_the_operator(k8s, operator, nodes):
    created = await create_evs(k8s, "orders", replicas=3)
    secret = await eventually(lambda: get_object(k8s, "v1/secrets", "orders-api-tokens"), what="tokens Secret")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    values = secret_values(secret)
    assert {values[r] for r in ("admin", "write", "read")} == {token_for(r) for r in ("admin", "write", "read")}
    assert values["api-tokens"].splitlines() == [f"{token_for(r)} {r}" for r in ("admin", "write", "read")]

    sts = await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["--api-tokens-file=/etc/evstore/api-tokens/api-tokens",
                                 "--cluster-secret-file=/etc/evstore/cluster/secret",
                                 "--min-in-sync-file=/etc/evstore/in-sync/min-in-sync"]
    volume = next(v for v in pod["volumes"] if v["name"] == "api-tokens")
    assert volume["secret"]["secretName"] == "orders-api-tokens"
    assert volume["secret"]["items"] == [{"key": "api-tokens", "path": "api-tokens"}]

    policy = await eventually(lambda: get_object(k8s, NETPOL, "orders"), what="NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "orders"
    assert get_object(k8s, NETPOL, "orders-etcd") is not None

    nodes.set_cluster("orders", leader_ordinal=0, replicas=3)
    await api(k8s, "PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/orders/status", {"status": {
        "observedGeneration": sts["metadata"]["generation"], "replicas": 3, "readyReplicas": 3,
        "updatedReplicas": 3, "currentRevision": "r", "updateRevision": "r"}})
    await eventually(lambda: get_object(k8s, EVS, "orders")["status"].get("phase") == "Ready", what="Ready")
    # (A timer pass that ran before the Secret existed may have asked without a token.)
    before, asked = len(nodes.unauthorized), len(nodes.asked)
    await eventually(lambda: len(nodes.asked) > asked + 3, what="more status passes")
    assert len(nodes.unauthorized) == before


async def test_a_given_tokens_secret_is_used_and_checked(k8s, operator, nodes):
    await create_evs(k8s, "orders", auth={"tokensSecretRef": {"name": "my-tokens"}})
    failed = await eventually(lambda: events(k8s, "orders", "InvalidSpec"), what="InvalidSpec")
    assert "my-tokens" in failed[0]["message"] and "admin" in failed[0]["message"]
    assert get_object(k8s, STS, "orders") is None

    nodes.admin_token = "my-own-admin-token-0123456789"
    await api(k8s, "POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-tokens"},
        "stringData": {"admin": nodes.admin_token, "api-tokens": f"{nodes.admin_token} admin\n"}})
    sts = await eventually(lambda: get_object(k8s, STS, "orders"), timeout=30, what="statefulset (retried)")
    volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "api-tokens")
    assert volume["secret"]["secretName"] == "my-tokens"
    assert get_object(k8s, "v1/secrets", "orders-api-tokens") is None
    nodes.set_cluster("orders", leader_ordinal=0, replicas=1)
    await eventually(lambda: "orders-0" in nodes.asked, what="the operator asks the node with the token")
    before, asked = len(nodes.unauthorized), len(nodes.asked)
    await eventually(lambda: len(nodes.asked) > asked + 2, what="more status passes")
    assert len(nodes.unauthorized) == before
