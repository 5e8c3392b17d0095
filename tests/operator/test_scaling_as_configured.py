"""Scaling with real node processes started, at each step, with the settings the operator generates
(test_node_as_configured.start_pod) and the decisions it takes (scaling.py), and a real etcd. The
StatefulSet controller and the kubelet are played here: pods start and stop as it would have them,
and the in-sync ConfigMap's file is rewritten in each pod as the kubelet would after an update."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from evstore.operator import manifests as m
from evstore.operator import scaling
from evstore.operator.spec import parse_spec
from test_node_as_configured import TOKENS, _request, etcd, in_sync_file, start_pod  # noqa: F401 (fixture)

SECRET = "shop-cluster-secret-0123456789"


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def _view(node) -> dict:
    return _request(f"{node.url}/v1/cluster", token=TOKENS["admin"])[1]


def _append(node, n: int) -> tuple[int, dict]:
    return _request(f"{node.url}/v1/streams/order-1", method="POST", token=TOKENS["write"],
                    body={"events": [{"type": "Placed", "data": {"n": n}}]})


def _events(node) -> list[tuple[int, dict]]:
    status, page = _request(f"{node.url}/v1/streams/order-1?limit=1000", token=TOKENS["read"])
    assert status == 200, page
    return [(e["position"], e["data"]) for e in page["events"]]


def _rolled(spec, *, replicas: int, revision: str, template_of=None) -> dict:
    """The StatefulSet as the operator reads it, its status as the controller reports it."""
    sts = m.statefulset(template_of or spec)
    sts["spec"]["replicas"] = replicas
    sts["metadata"]["generation"] = 1
    sts["status"] = {"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
                     "updatedReplicas": replicas, "currentRevision": revision, "updateRevision": revision}
    return sts


def test_a_single_node_store_grows_into_one_cluster_holding_its_whole_log(node_factory, tmp_path, etcd):
    # 0. A store made by the previous operator: one pod, a single node (no etcd), with events.
    old = parse_spec("orders", "shop", {"etcd": {"managed": False}})
    pod0 = start_pod(node_factory, tmp_path, old, 0, SECRET, local_advertise_url=True)
    for n in range(10):
        assert _append(pod0, n)[0] == 200
    before = _events(pod0)

    # 1. Scaled to 3 (etcd given): the running pod has the old template, so the StatefulSet stays at
    #    one pod, which restarts (OnDelete: the operator deletes it) into the cluster.
    new = parse_spec("orders", "shop", {"replicas": 3, "etcd": {"endpoints": [etcd.client_url]}})
    template = m.statefulset(new)["spec"]["template"]
    running = _rolled(old, replicas=1, revision="old")
    assert scaling.statefulset_replicas(3, running, template, m.is_subset) == 1
    first_value = scaling.initial_min_in_sync(new.required_in_sync, 1)
    assert first_value == 1  # the store's one node can take writes: a scale-up never stops them
    pod0.stop()
    pod0 = start_pod(node_factory, tmp_path, new, 0, SECRET, local_advertise_url=True, min_in_sync=first_value)
    view = _wait(lambda: (v := _view(pod0)).get("role") == "leader" and v, 30, "pod 0 leading")
    assert view["epoch"] > 0 and view["minInSync"] == 1
    assert _events(pod0) == before
    assert _append(pod0, 10)[0] == 200

    # 2. Pod 0 runs the current template: the StatefulSet grows; the new pods start empty and copy.
    assert scaling.statefulset_replicas(3, _rolled(new, replicas=1, revision="new"), template, m.is_subset) == 3
    joiners = [start_pod(node_factory, tmp_path, new, i, SECRET, wait=False, local_advertise_url=True,
                         min_in_sync=first_value) for i in (1, 2)]
    positions = []
    for n in range(11, 31):  # writes go on meanwhile, each acknowledged once, by pod 0
        status, reply = _append(pod0, n)
        assert status == 200, reply
        positions.append(reply["position"])
    assert len(set(positions)) == 20
    for node in joiners:
        node.wait_ready(timeout=60)
    view = _wait(lambda: (v := _view(pod0)) and len(v.get("isr") or ()) == 3 and v, 60, "a full ISR")

    # 3. The operator raises minInSync now that the new replicas are in sync; the kubelet updates the
    #    mounted file in every pod, and the leader enforces it without a restart.
    raised = scaling.next_min_in_sync(new.required_in_sync, first_value, len(view["isr"]))
    assert raised == 2
    for ordinal in range(3):
        in_sync_file(tmp_path, new, ordinal).write_text(str(raised))
    _wait(lambda: _view(pod0).get("minInSync") == 2, 20, "minInSync 2 on the leader")
    status, reply = _request(f"{joiners[1].url}/v1/streams/order-1", method="POST", token=TOKENS["write"],
                             body={"events": [{"type": "Placed", "data": {"n": 31}}]})
    assert status == 200, reply
    everything = _wait(lambda: (e := _events(pod0)) and len(e) == 32 and e, 20, "32 events on the leader")
    assert everything[:10] == before and [d["n"] for _, d in everything] == list(range(32))
    for node in joiners:
        _wait(lambda: _events(node) == everything, 30, f"every event on {node.url}")
    views = [_view(n) for n in (pod0, *joiners)]
    assert [v["role"] for v in views] == ["leader", "follower", "follower"]
    assert {v["leader"]["node"] for v in views} == {"orders-0"}


def test_the_first_pod_of_a_three_replica_store_refuses_writes_alone(node_factory, tmp_path, etcd):
    """The configured size reaches the first pod: minInSync 2 from the start, so a lone pod answers
    503 not_enough_replicas and writes nothing (before: it took a majority of the one member it saw)."""
    spec = parse_spec("orders", "shop", {"replicas": 3, "etcd": {"endpoints": [etcd.client_url]}})
    pod0 = start_pod(node_factory, tmp_path, spec, 0, SECRET, local_advertise_url=True)
    view = _wait(lambda: (v := _view(pod0)).get("role") == "leader" and v, 30, "pod 0 leading")
    assert view["minInSync"] == 2
    request = urllib.request.Request(f"{pod0.url}/v1/streams/order-1", method="POST",
                                     data=json.dumps({"events": [{"type": "Placed", "data": {}}]}).encode(),
                                     headers={"Authorization": f"Bearer {TOKENS['write']}",
                                              "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10)
        status, reply = 200, {}
    except urllib.error.HTTPError as exc:
        status, reply = exc.code, json.loads(exc.read())
    assert status == 503 and reply.get("reason") == "not_enough_replicas", reply
    view = _view(pod0)
    me = next(n for n in view["members"] if n["node"] == "orders-0")
    assert (me["position"], view["committedPosition"]) == (0, 0), view
