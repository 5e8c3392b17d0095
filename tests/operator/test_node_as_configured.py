"""Real node processes started exactly as the operator's manifests configure a store's pod.

The ConfigMap's settings (envFrom), the container's env (the cluster secret from its Secret, the
fields of the pod), its args and the API tokens file from the Secret volume are resolved as the
kubelet would (podenv.py); only host, port and data directory are the local process's own
(NodeProcess passes them as flags, which win over the ConfigMap's variables). Etcd is a real etcd.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from evstore.client.harness.localetcd import EtcdProcess
from evstore.operator import manifests as m
from evstore.operator import scaling
from evstore.operator.spec import StoreSpec, parse_spec
from podenv import container_environment, mounted_args

TOKENS = {"admin": "admin-token-0123456789abcdef", "write": "write-token-0123456789abcdef",
          "read": "read-token-0123456789abcdef"}


def _request(url: str, *, method: str = "GET", token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method=method),
                                    timeout=10) as reply:
            payload = reply.read()
            is_json = reply.headers.get_content_type() == "application/json"
            return reply.status, json.loads(payload) if is_json and payload else {}
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def start_pod(node_factory, tmp_path, spec: StoreSpec, ordinal: int, cluster_secret: str, wait: bool = True,
              local_advertise_url: bool = False, min_in_sync: int | None = None):
    """Pod <ordinal> of the store's StatefulSet as a local process. `local_advertise_url`: peers reach
    it at its loopback URL instead of the pod DNS name (which resolves only inside the cluster).
    `min_in_sync`: the in-sync ConfigMap's value (default: what the operator gives a new store); the
    pod's copy of the file is `in_sync_file(tmp_path, spec, ordinal)`."""
    pod_name = m.pod_name(spec.name, ordinal)
    secrets = {spec.secret_ref.name: {spec.secret_ref.key: cluster_secret},
               spec.tokens_secret: m.api_tokens_secret(spec, TOKENS)["stringData"]}
    configmaps = {m.configmap_name(spec.name): m.configmap(spec)["data"]}
    if spec.etcd_enabled:
        value = scaling.initial_min_in_sync(spec.required_in_sync, None) if min_in_sync is None else min_in_sync
        configmaps[m.in_sync_configmap_name(spec.name)] = m.in_sync_configmap(spec, value)["data"]
    pod = m.statefulset(spec)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["evstore", "serve"]
    env = container_environment(container, configmaps=configmaps,
                                secrets=secrets, fields={"metadata.name": pod_name, "status.podIP": "127.0.0.1"})
    local = f"{spec.namespace}-{pod_name}"
    args = mounted_args(pod, container, secrets=secrets, configmaps=configmaps, root=tmp_path / local / "mounts")
    node = node_factory(local, args=tuple(args), env=env, start=False)
    if local_advertise_url:
        assert env["EVSTORE_ADVERTISE_URL"] == f"http://{pod_name}.{spec.name}-peers.{spec.namespace}.svc:7113"
        node.env["EVSTORE_ADVERTISE_URL"] = node.url
    return node.start(wait=wait)


def in_sync_file(tmp_path, spec: StoreSpec, ordinal: int):
    """Where start_pod mounted the pod's in-sync ConfigMap file (write it to play the kubelet)."""
    return tmp_path / f"{spec.namespace}-{m.pod_name(spec.name, ordinal)}" / "mounts" / "in-sync" / m.MIN_IN_SYNC_KEY


def test_a_store_configured_by_the_operator_refuses_requests_without_a_token(node_factory, tmp_path):
    node = start_pod(node_factory, tmp_path, parse_spec("orders", "shop", {"etcd": {"managed": False}}), 0,
                     "cluster-secret-0123456789ab")
    url = node.url
    append = {"events": [{"type": "Placed", "data": {}}]}
    assert _request(f"{url}/v1/streams/order-1")[0] == 401
    assert _request(f"{url}/v1/streams/order-1", method="POST", body=append)[0] == 401
    assert _request(f"{url}/v1/cluster")[0] == 401
    assert _request(f"{url}/v1/streams/order-1", method="POST", body=append, token=TOKENS["read"])[0] == 403
    assert _request(f"{url}/v1/streams/order-1", method="POST", body=append, token=TOKENS["write"])[0] == 200
    assert _request(f"{url}/v1/streams/order-1", token=TOKENS["read"])[0] == 200
    assert _request(f"{url}/v1/cluster", token=TOKENS["admin"])[0] == 200
    # Probes and Prometheus need no token.
    assert _request(f"{url}/health/ready")[0] == 200 and _request(f"{url}/metrics")[0] == 200


@pytest.fixture
def etcd(tmp_path):
    proc = EtcdProcess(tmp_path / "etcd")
    try:
        yield proc.start()
    finally:
        proc.stop()


def _leader(url: str) -> str | None:
    status, view = _request(f"{url}/v1/cluster", token=TOKENS["admin"])
    return (view.get("leader") or {}).get("node") if status == 200 and view.get("role") == "leader" else None


def test_stores_named_alike_in_two_namespaces_share_an_etcd_without_seeing_each_other(node_factory, tmp_path,
                                                                                        etcd):
    """Same store name, same pod names, one etcd: each store elects its own leader and takes writes."""
    nodes = []
    for namespace in ("shop", "billing"):
        spec = parse_spec("orders", namespace, {"etcd": {"endpoints": [etcd.client_url]}})
        nodes.append(start_pod(node_factory, tmp_path, spec, 0, f"{namespace}-cluster-secret-0123456789"))
    deadline = time.monotonic() + 30
    while not all(_leader(n.url) == "orders-0" for n in nodes):
        assert time.monotonic() < deadline, [_request(f"{n.url}/v1/cluster", token=TOKENS["admin"]) for n in nodes]
        time.sleep(0.2)
    views = [_request(f"{n.url}/v1/cluster", token=TOKENS["admin"])[1] for n in nodes]
    assert [v["store"] for v in views] == ["shop.orders", "billing.orders"]
    for node in nodes:
        status, reply = _request(f"{node.url}/v1/streams/order-1", method="POST", token=TOKENS["write"],
                                 body={"events": [{"type": "Placed", "data": {}}]})
        assert (status, reply.get("position")) == (200, 1)  # each store has its own log
    # Neither store was disturbed by the other: one election each, still leading.
    assert [_leader(n.url) for n in nodes] == ["orders-0", "orders-0"]
    assert [v["epoch"] for v in views] == [_request(f"{n.url}/v1/cluster", token=TOKENS["admin"])[1]["epoch"]
                                           for n in nodes]


def test_a_too_short_cluster_secret_is_refused_without_being_echoed(node_factory, tmp_path, etcd):
    spec = parse_spec("orders", "shop", {"etcd": {"endpoints": [etcd.client_url]}})
    node = start_pod(node_factory, tmp_path, spec, 0, "tooshort-s3cr3t", wait=False)
    code = node.wait_exit(timeout=20)
    assert code not in (None, 0)
    log = node.log()
    assert "--cluster-secret-file" in log and "at least 16 characters" in log
    assert "tooshort-s3cr3t" not in log


def test_a_three_replica_store_configured_by_the_operator_replicates_and_is_closed(node_factory, tmp_path, etcd):
    spec = parse_spec("orders", "shop", {"replicas": 3, "etcd": {"endpoints": [etcd.client_url]}})
    nodes = [start_pod(node_factory, tmp_path, spec, i, "shop-cluster-secret-0123456789", wait=False,
                       local_advertise_url=True) for i in range(3)]
    for node in nodes:
        node.wait_ready(timeout=60)
    deadline = time.monotonic() + 60
    while True:
        views = [_request(f"{n.url}/v1/cluster", token=TOKENS["admin"])[1] for n in nodes]
        leaders = {(v.get("leader") or {}).get("node") for v in views}
        if len(leaders) == 1 and None not in leaders and all(len(v.get("isr") or ()) == 3 for v in views):
            break
        assert time.monotonic() < deadline, views
        time.sleep(0.2)
    leader = leaders.pop()
    follower = next(n for n, v in zip(nodes, views) if v["node"] != leader)
    append = {"events": [{"type": "Placed", "data": {"n": 1}}]}
    for node in nodes:
        assert _request(f"{node.url}/v1/streams/order-1", method="POST", body=append)[0] == 401
        assert _request(f"{node.url}/v1/streams/order-1")[0] == 401
    status, reply = _request(f"{follower.url}/v1/streams/order-1", method="POST", body=append, token=TOKENS["write"])
    assert (status, reply.get("position")) == (200, 1), reply  # forwarded to the leader
    for node in nodes:
        deadline = time.monotonic() + 20
        while _request(f"{node.url}/v1/streams/order-1", token=TOKENS["read"])[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
