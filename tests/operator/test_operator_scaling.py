"""Scaling through the real kopf operator against the kmock API emulator (fake node replies).

kmock runs no StatefulSet controller: the tests play it (pods created, deleted pods recreated on the
new revision, the StatefulSet's status reported), and say so where they do. The same steps with real
node processes are in test_scaling_as_configured.py."""
from __future__ import annotations

from evs_helpers import (EVS, NAMESPACE, STS, api, create_evs, events, eventually, get_object, patch_evs,
                         simulate_statefulset_ready, sts_path)

CONFIGMAPS = "v1/configmaps"


def _pod(name: str, revision: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/name": "evstore", "app.kubernetes.io/instance": "orders",
                                    "app.kubernetes.io/component": "node", "controller-revision-hash": revision}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def _in_sync(k8s) -> str | None:
    config = get_object(k8s, CONFIGMAPS, "orders-in-sync")
    return None if config is None else config["data"]["min-in-sync"]


def _status(k8s) -> dict:
    return get_object(k8s, EVS, "orders").get("status") or {}


async def test_a_new_three_replica_store_needs_two_in_sync_from_its_first_pod(k8s, operator):
    await create_evs(k8s, "orders", replicas=3)
    sts = await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    config = get_object(k8s, CONFIGMAPS, "orders-in-sync")
    assert config is not None and config["data"] == {"min-in-sync": "2"}
    # Created before the pods could start (their volume needs it).
    assert int(config["metadata"]["resourceVersion"]) < int(sts["metadata"]["resourceVersion"])
    pod = sts["spec"]["template"]["spec"]
    assert "--min-in-sync-file=/etc/evstore/in-sync/min-in-sync" in pod["containers"][0]["args"]
    volume = next(v for v in pod["volumes"] if v["name"] == "in-sync")
    assert volume["configMap"]["name"] == "orders-in-sync"
    assert "EVSTORE_MIN_IN_SYNC" not in get_object(k8s, CONFIGMAPS, "orders-config")["data"]


async def test_a_single_node_store_restarts_into_the_cluster_before_it_grows(k8s, operator, nodes):
    # A store from before clustering at one replica: a single node with events on its volume.
    await create_evs(k8s, "orders", etcd={"managed": False})
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    k8s.objects["v1/pods", NAMESPACE, "orders-0"] = _pod("orders-0", "rev-1")  # playing the controller
    await simulate_statefulset_ready(k8s, "orders", revision="rev-1")
    nodes.set_cluster("orders", leader_ordinal=0, replicas=1)
    await eventually(lambda: _status(k8s).get("phase") == "Ready", what="Ready")

    await patch_evs(k8s, "orders", {"spec": {"replicas": 3, "etcd": {"managed": None}}})
    sts = await eventually(lambda: (s := get_object(k8s, STS, "orders")) and any(
        a.startswith("--min-in-sync-file") for a in s["spec"]["template"]["spec"]["containers"][0]["args"]) and s,
        what="the clustered template")
    assert get_object(k8s, CONFIGMAPS, "orders-config")["data"]["EVSTORE_ETCD_ENDPOINTS"]
    assert get_object(k8s, STS, "orders-etcd") is not None
    # Pod 0 still runs the single-node template: no new pod may start beside it.
    assert sts["spec"]["replicas"] == 1 and _in_sync(k8s) == "1"
    waiting = await eventually(lambda: events(k8s, "orders", "ScaleUpWaiting"), what="ScaleUpWaiting")
    assert "restarts into the cluster first" in waiting[0]["message"]

    # Playing the controllers: etcd is up; the new template is revision rev-2, pod 0 still on rev-1.
    await eventually(lambda: get_object(k8s, STS, "orders-etcd"), what="the managed etcd")
    await simulate_statefulset_ready(k8s, "orders-etcd")
    await api(k8s, "PATCH", sts_path("orders") + "/status", {"status": {
        "observedGeneration": sts["metadata"]["generation"], "updateRevision": "rev-2", "updatedReplicas": 0}})
    await eventually(lambda: get_object(k8s, "v1/pods", "orders-0") is None, what="pod 0 restarted")
    assert get_object(k8s, STS, "orders")["spec"]["replicas"] == 1
    assert nodes.step_downs == []  # one pod: nobody to hand over to
    k8s.objects["v1/pods", NAMESPACE, "orders-0"] = _pod("orders-0", "rev-2")  # recreated, now clustered
    await simulate_statefulset_ready(k8s, "orders", revision="rev-2")

    # Now it grows; minInSync stays 1 while the new pods copy the log (writes go on)...
    await eventually(lambda: get_object(k8s, STS, "orders")["spec"]["replicas"] == 3, what="3 replicas")
    nodes.set_cluster("orders", leader_ordinal=0, replicas=3, isr=[0], min_in_sync=1)
    status = await eventually(lambda: (s := _status(k8s)) and "until the new replicas catch up"
                              in s.get("message", "") and s, what="status saying minInSync rises later")
    assert status["minInSync"] == 1 and _in_sync(k8s) == "1"
    # ... and rises to a majority of 3 once they are in sync.
    nodes.set_cluster("orders", leader_ordinal=0, replicas=3, isr=[0, 1], min_in_sync=1)
    await eventually(lambda: _in_sync(k8s) == "2", what="minInSync 2")
    assert events(k8s, "orders", "MinInSyncChanged")


async def test_a_clustered_store_is_not_turned_back_into_single_nodes(k8s, operator):
    await create_evs(k8s, "orders")
    config = await eventually(lambda: get_object(k8s, CONFIGMAPS, "orders-config"), what="configmap")
    endpoints = config["data"]["EVSTORE_ETCD_ENDPOINTS"]
    await eventually(lambda: _status(k8s).get("observedGeneration") == 1, what="accepted")
    await patch_evs(k8s, "orders", {"spec": {"etcd": {"managed": False}}})
    kept = await eventually(lambda: events(k8s, "orders", "ClusteringKept"), what="ClusteringKept")
    assert kept[0]["type"] == "Warning"
    assert get_object(k8s, CONFIGMAPS, "orders-config")["data"]["EVSTORE_ETCD_ENDPOINTS"] == endpoints
    assert get_object(k8s, STS, "orders-etcd") is not None


async def test_a_clustered_store_keeps_its_etcd(k8s, operator):
    await create_evs(k8s, "orders", etcd={"endpoints": ["http://etcd-a.infra.svc:2379"]})
    await eventually(lambda: _status(k8s).get("observedGeneration") == 1, what="accepted")
    await patch_evs(k8s, "orders", {"spec": {"etcd": {"endpoints": ["http://etcd-b.infra.svc:2379"]}}})
    refused = await eventually(lambda: events(k8s, "orders", "EtcdChangeRefused"), what="EtcdChangeRefused")
    assert refused[0]["type"] == "Warning"
    data = get_object(k8s, CONFIGMAPS, "orders-config")["data"]
    assert data["EVSTORE_ETCD_ENDPOINTS"] == "http://etcd-a.infra.svc:2379"
    # Another endpoint of the same etcd (one in common) is taken.
    both = ["http://etcd-a.infra.svc:2379", "http://etcd-a2.infra.svc:2379"]
    await patch_evs(k8s, "orders", {"spec": {"etcd": {"endpoints": both}}})
    await eventually(lambda: get_object(k8s, CONFIGMAPS, "orders-config")["data"]["EVSTORE_ETCD_ENDPOINTS"]
                     == ",".join(both), what="the added endpoint")


async def test_a_lower_min_in_sync_applies_at_once(k8s, operator):
    await create_evs(k8s, "orders", replicas=3)
    await eventually(lambda: _in_sync(k8s) == "2", what="minInSync 2")
    await patch_evs(k8s, "orders", {"spec": {"durability": {"minInSync": 1}}})
    await eventually(lambda: _in_sync(k8s) == "1", what="minInSync 1")
    await patch_evs(k8s, "orders", {"spec": {"durability": {"minInSync": 3}}})
    await eventually(lambda: _status(k8s).get("observedGeneration") == 3, what="accepted")
    assert _in_sync(k8s) == "1"  # raised only once three replicas are in sync (none answered here)


async def test_scaling_down_to_one_lowers_min_in_sync_first(k8s, operator, nodes):
    await create_evs(k8s, "orders", replicas=3)
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    nodes.set_cluster("orders", leader_ordinal=2, replicas=3, min_in_sync=2)
    await simulate_statefulset_ready(k8s, "orders")
    await eventually(lambda: _status(k8s).get("phase") == "Ready", what="Ready")
    await patch_evs(k8s, "orders", {"spec": {"replicas": 1}})  # the leader still enforces 2
    await eventually(lambda: events(k8s, "orders", "ScaleDownRefused"), what="ScaleDownRefused")
    await eventually(lambda: get_object(k8s, EVS, "orders")["spec"]["replicas"] == 3, what="spec put back")
    assert get_object(k8s, STS, "orders")["spec"]["replicas"] == 3

    await patch_evs(k8s, "orders", {"spec": {"durability": {"minInSync": 1}}})
    await eventually(lambda: _in_sync(k8s) == "1", what="minInSync 1 in the ConfigMap")
    nodes.set_cluster("orders", leader_ordinal=2, replicas=3, min_in_sync=1)  # the nodes re-read the file
    await eventually(lambda: _status(k8s).get("minInSync") == 1, what="status minInSync 1")
    # orders-2 leads and goes with the scale-down: it steps down first (leadership moves to orders-0)
    nodes.on_step_down = lambda pod: nodes.set_cluster("orders", leader_ordinal=0, replicas=3, min_in_sync=1)
    await patch_evs(k8s, "orders", {"spec": {"replicas": 1}})
    await eventually(lambda: get_object(k8s, STS, "orders")["spec"]["replicas"] == 1, what="one replica")
    assert _in_sync(k8s) == "1" and nodes.step_downs == ["orders-2"]
