"""The real kopf operator (evstore.operator.handlers) against kmock on 127.0.0.1.

kmock stands in for the API server (none can run here) and has no controllers: the tests play the
StatefulSet controller by patching StatefulSet status and creating Pods/PVCs, and a fake node HTTP
server on 127.0.0.1 answers /v1/cluster in place of the evstore pods.
"""
from __future__ import annotations

import asyncio

from evstore.operator.kube import secret_values
from evs_helpers import (EVS, NAMESPACE, STS, api, create_evs, events, eventually, get_object, patch_evs,
                         simulate_statefulset_ready)

CHILDREN = [
    ("v1/secrets", "orders-cluster-secret"),
    ("v1/secrets", "orders-api-tokens"),
    ("networking.k8s.io/v1/networkpolicies", "orders"),
    ("networking.k8s.io/v1/networkpolicies", "orders-etcd"),
    ("v1/configmaps", "orders-config"),
    ("v1/configmaps", "orders-dashboards"),
    ("v1/services", "orders-peers"),
    ("v1/services", "orders"),
    ("v1/services", "orders-etcd"),
    (STS, "orders"),
    (STS, "orders-etcd"),
    ("policy/v1/poddisruptionbudgets", "orders"),
    ("policy/v1/poddisruptionbudgets", "orders-etcd"),
    ("monitoring.coreos.com/v1/servicemonitors", "orders"),
]


def evs(k8s, name="orders"):
    return get_object(k8s, EVS, name)


async def test_create_makes_every_child_with_owner_references(k8s, operator):
    created = await create_evs(k8s, "orders", replicas=3, monitoring={"serviceMonitor": True, "dashboards": True})
    uid = created["metadata"]["uid"]

    for resource, name in CHILDREN:
        child = await eventually(lambda: get_object(k8s, resource, name), what=f"{resource} {name}")
        assert child["metadata"]["ownerReferences"] == [
            {"apiVersion": "evstore.io/v1alpha1", "kind": "EventStore", "name": "orders", "uid": uid,
             "controller": True, "blockOwnerDeletion": True}], (resource, name)

    sts = get_object(k8s, STS, "orders")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cluster-secret"]["secret"]["secretName"] == "orders-cluster-secret"
    assert volumes["cluster-secret"]["secret"]["items"] == [{"key": "secret", "path": "secret"}]
    config = get_object(k8s, "v1/configmaps", "orders-config")["data"]
    assert config["EVSTORE_ETCD_ENDPOINTS"].split(",")[0] == "http://orders-etcd-0.orders-etcd.default.svc:2379"
    assert secret_values(get_object(k8s, "v1/secrets", "orders-cluster-secret")) == {
        "secret": "generated-test-secret"}

    status = (await eventually(lambda: evs(k8s).get("status", {}).get("observedGeneration") == 1
                               and evs(k8s)["status"], what="observedGeneration"))
    assert status["phase"] == "Pending"
    assert status["selector"] == ("app.kubernetes.io/component=node,app.kubernetes.io/instance=orders,"
                                  "app.kubernetes.io/name=evstore")
    # kopf posts Events from a background queue, one at a time: wait for the one meant, not just any.
    await eventually(lambda: any("StatefulSet orders" in e["message"] for e in events(k8s, "orders", "Created")),
                     what="Created event for StatefulSet orders")


async def test_a_single_replica_store_runs_clustered(k8s, operator):
    """Clustered from the first pod (etcd and the in-sync ConfigMap), so scaling only adds followers."""
    await create_evs(k8s, "solo")
    sts = await eventually(lambda: get_object(k8s, STS, "solo"), what="statefulset")
    assert sts["spec"]["replicas"] == 1
    config = await eventually(lambda: get_object(k8s, "v1/configmaps", "solo-config"), what="configmap")
    assert config["data"]["EVSTORE_ETCD_ENDPOINTS"].startswith("http://solo-etcd-0.solo-etcd.")
    assert get_object(k8s, STS, "solo-etcd") is not None
    assert get_object(k8s, "v1/configmaps", "solo-in-sync")["data"] == {"min-in-sync": "1"}
    assert get_object(k8s, "monitoring.coreos.com/v1/servicemonitors", "solo") is None


async def test_a_single_node_without_etcd_only_when_asked(k8s, operator):
    await create_evs(k8s, "solo", etcd={"managed": False})
    sts = await eventually(lambda: get_object(k8s, STS, "solo"), what="statefulset")
    assert sts["spec"]["replicas"] == 1
    config = await eventually(lambda: get_object(k8s, "v1/configmaps", "solo-config"), what="configmap")
    assert "EVSTORE_ETCD_ENDPOINTS" not in config["data"]
    assert get_object(k8s, STS, "solo-etcd") is None and get_object(k8s, "v1/configmaps", "solo-in-sync") is None
    assert not any(a.startswith("--min-in-sync-file") for a in sts["spec"]["template"]["spec"]["containers"][0]["args"])


async def test_spec_change_updates_statefulset_and_config(k8s, operator):
    await create_evs(k8s, "orders", image="evstore:1")
    sts = await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    first_hash = sts["spec"]["template"]["metadata"]["annotations"]["evstore.io/config-hash"]

    await patch_evs(k8s, "orders", {"spec": {"image": "evstore:2", "logLevel": "debug"}})
    sts = await eventually(
        lambda: (s := get_object(k8s, STS, "orders"))["spec"]["template"]["spec"]["containers"][0]["image"]
        == "evstore:2" and s, what="new image")
    assert sts["spec"]["template"]["metadata"]["annotations"]["evstore.io/config-hash"] != first_hash
    await eventually(lambda: get_object(k8s, "v1/configmaps", "orders-config")["data"]["EVSTORE_LOG_LEVEL"]
                     == "debug", what="log level in the ConfigMap")
    await eventually(lambda: events(k8s, "orders", "Updated"), what="Updated events")

    assert get_object(k8s, STS, "orders-etcd") is not None  # clustered from the first pod
    # Playing the StatefulSet controller: the pod was recreated on the new template (OnDelete).
    await simulate_statefulset_ready(k8s, "orders", revision="rev-2")
    await patch_evs(k8s, "orders", {"spec": {"replicas": 3}})
    await eventually(lambda: get_object(k8s, STS, "orders")["spec"]["replicas"] == 3, what="3 replicas")
    await eventually(lambda: events(k8s, "orders", "ScalingUp"), what="ScalingUp event")
    await eventually(lambda: evs(k8s)["status"].get("observedGeneration") == 3, what="observedGeneration 3")


async def test_status_ready_with_leader_from_nodes(k8s, operator, nodes):
    await create_evs(k8s, "orders", replicas=3)
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    nodes.set_cluster("orders", leader_ordinal=1, replicas=3, epoch=7, position=42)
    await simulate_statefulset_ready(k8s, "orders")

    status = await eventually(lambda: evs(k8s)["status"].get("phase") == "Ready" and evs(k8s)["status"],
                              what="phase Ready")
    assert status["leader"] == "orders-1"
    assert status["epoch"] == 7
    assert status["lastPosition"] == 42
    assert status["readyReplicas"] == 3
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Degraded"]["status"] == "False"
    assert conditions["Progressing"]["status"] == "False"
    assert set(nodes.asked) >= {"orders-0", "orders-1", "orders-2"}
    await eventually(lambda: events(k8s, "orders", "LeaderElected"), what="LeaderElected event")
    assert operator.deps.metrics.ready_stores._value.get() == 1

    # One follower drops out of the in-sync set and its pod is not ready: still writable, less redundant.
    nodes.set_cluster("orders", leader_ordinal=1, replicas=3, epoch=7, position=50, isr=[0, 1])
    del nodes.clusters["orders-2"]
    await simulate_statefulset_ready(k8s, "orders", ready=2)
    status = await eventually(lambda: evs(k8s)["status"].get("phase") == "Degraded" and evs(k8s)["status"],
                              what="phase Degraded")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Degraded"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"
    assert status["lastPosition"] == 50
    # The Event is posted by kopf's background poster, not with the status patch: it may land later.
    degraded = await eventually(lambda: events(k8s, "orders", "PhaseDegraded"), what="PhaseDegraded event")
    assert degraded[0]["type"] == "Warning"


async def test_scale_down_below_min_in_sync_is_reverted(k8s, operator, nodes):
    await create_evs(k8s, "orders", replicas=3)
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    nodes.set_cluster("orders", leader_ordinal=0, replicas=3)
    await simulate_statefulset_ready(k8s, "orders")

    await patch_evs(k8s, "orders", {"spec": {"replicas": 1}})
    refused = await eventually(lambda: events(k8s, "orders", "ScaleDownRefused"), what="ScaleDownRefused")
    assert refused[0]["type"] == "Warning"
    assert "needs 2 in-sync replicas" in refused[0]["message"]
    await eventually(lambda: evs(k8s)["spec"]["replicas"] == 3, what="spec.replicas reverted to 3")
    assert get_object(k8s, STS, "orders")["spec"]["replicas"] == 3
    assert operator.deps.metrics.scale_down_refusals._value.get() == 1


async def test_scale_down_that_removes_in_sync_pods_is_reverted_then_allowed(k8s, operator, nodes):
    await create_evs(k8s, "orders", replicas=5)
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    # orders-2 lags behind: the in-sync set is 0, 1, 3, 4; scaling to 3 would remove 3 and 4.
    nodes.set_cluster("orders", leader_ordinal=0, replicas=5, isr=[0, 1, 3, 4])
    await simulate_statefulset_ready(k8s, "orders")

    await patch_evs(k8s, "orders", {"spec": {"replicas": 3}})
    refused = await eventually(lambda: events(k8s, "orders", "ScaleDownRefused"), what="ScaleDownRefused")
    assert "orders-3, orders-4" in refused[0]["message"]
    await eventually(lambda: evs(k8s)["spec"]["replicas"] == 5, what="spec.replicas reverted to 5")
    assert get_object(k8s, STS, "orders")["spec"]["replicas"] == 5

    nodes.set_cluster("orders", leader_ordinal=0, replicas=5)  # orders-2 caught up
    await patch_evs(k8s, "orders", {"spec": {"replicas": 3}})
    await eventually(lambda: get_object(k8s, STS, "orders")["spec"]["replicas"] == 3, what="scaled to 3")
    await eventually(lambda: events(k8s, "orders", "ScalingDown"), what="ScalingDown event")
    assert evs(k8s)["spec"]["replicas"] == 3


async def test_a_scale_down_that_removes_the_leader_hands_leadership_over_first(k8s, operator, nodes):
    """The StatefulSet removes the highest ordinals: with orders-2 leading, 3 -> 2 stopped the leader with no
    step-down (its writes in flight failed, and the others waited out its lease)."""
    await create_evs(k8s, "orders", replicas=3)
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    nodes.set_cluster("orders", leader_ordinal=2, replicas=3)
    await simulate_statefulset_ready(k8s, "orders")
    nodes.step_down_status = 409  # no follower caught up: the scale-down waits, the leader keeps its pod

    await patch_evs(k8s, "orders", {"spec": {"replicas": 2}})
    blocked = await eventually(lambda: events(k8s, "orders", "SwitchoverBlocked"), what="SwitchoverBlocked")
    assert "orders-2" in blocked[0]["message"] and nodes.step_downs[0] == "orders-2"
    assert get_object(k8s, STS, "orders")["spec"]["replicas"] == 3

    nodes.step_down_status = 200
    nodes.on_step_down = lambda pod: nodes.set_cluster("orders", leader_ordinal=0, replicas=3)
    await eventually(lambda: get_object(k8s, STS, "orders")["spec"]["replicas"] == 2, timeout=30,
                     what="scaled to 2 after the step-down")
    assert nodes.step_downs[-1] == "orders-2"
    assert events(k8s, "orders", "SwitchedOver")


def _pod(name: str, revision: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/name": "evstore", "app.kubernetes.io/instance": "orders",
                                    "app.kubernetes.io/component": "node", "controller-revision-hash": revision}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


async def test_image_change_rolls_followers_first_then_switches_leader_over(k8s, operator, nodes):
    await create_evs(k8s, "orders", replicas=3)
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    nodes.set_cluster("orders", leader_ordinal=1, replicas=3)
    for i in range(3):
        k8s.objects["v1/pods", NAMESPACE, f"orders-{i}"] = _pod(f"orders-{i}", "rev-1")
    await simulate_statefulset_ready(k8s, "orders", revision="rev-1")
    await simulate_statefulset_ready(k8s, "orders-etcd")  # pods are restarted only while etcd has a quorum
    await eventually(lambda: evs(k8s)["status"].get("phase") == "Ready", what="phase Ready")

    leader_alive_at_step_down = []
    nodes.on_step_down = lambda pod: leader_alive_at_step_down.append(get_object(k8s, "v1/pods", pod) is not None)
    nodes.step_down_status = 409  # first, no follower is in sync: the leader must not restart
    await patch_evs(k8s, "orders", {"spec": {"image": "evstore:2"}})
    await eventually(lambda: get_object(k8s, STS, "orders")["spec"]["template"]["spec"]["containers"][0]["image"]
                     == "evstore:2", what="new template")
    sts = get_object(k8s, STS, "orders")
    await api(k8s, "PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/orders/status",
              {"status": {"observedGeneration": sts["metadata"]["generation"], "updateRevision": "rev-2",
                          "updatedReplicas": 0}})

    restarted = []
    for _ in range(2):  # the two followers, one at a time, highest ordinal first
        gone = await eventually(lambda: [p for p in ("orders-0", "orders-2") if p not in restarted
                                         and get_object(k8s, "v1/pods", p) is None], what="a follower restart")
        assert len(gone) == 1, gone
        assert get_object(k8s, "v1/pods", "orders-1") is not None, "the leader restarted before a follower"
        restarted.append(gone[0])
        k8s.objects["v1/pods", NAMESPACE, gone[0]] = _pod(gone[0], "rev-2")  # the controller recreates it
    assert restarted == ["orders-2", "orders-0"]

    blocked = await eventually(lambda: events(k8s, "orders", "SwitchoverBlocked"), what="SwitchoverBlocked")
    assert blocked[0]["type"] == "Warning"
    assert get_object(k8s, "v1/pods", "orders-1") is not None

    nodes.step_down_status = 200
    await eventually(lambda: get_object(k8s, "v1/pods", "orders-1") is None, what="leader pod restart")
    assert nodes.step_downs[-1] == "orders-1"
    assert leader_alive_at_step_down and all(leader_alive_at_step_down)
    await eventually(lambda: events(k8s, "orders", "SwitchedOver"), what="SwitchedOver event")


async def test_a_pod_stuck_on_a_bad_image_is_restarted_once_the_image_is_fixed(k8s, operator, nodes):
    """With OnDelete nothing but the operator replaces a pod: one left on a bad image tag (ImagePullBackOff),
    never ready, kept every later roll waiting for all pods to be ready, even after the image was fixed."""
    await create_evs(k8s, "orders", replicas=3)
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    nodes.set_cluster("orders", leader_ordinal=0, replicas=3, isr=[0, 1])
    for i in range(2):
        k8s.objects["v1/pods", NAMESPACE, f"orders-{i}"] = _pod(f"orders-{i}", "rev-1")
    stuck = _pod("orders-2", "rev-bad")
    stuck["status"] = {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
                       "containerStatuses": [{"name": "evstore", "ready": False,
                                              "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
    k8s.objects["v1/pods", NAMESPACE, "orders-2"] = stuck
    await simulate_statefulset_ready(k8s, "orders", ready=2, revision="rev-1")  # the image is fixed: rev-1
    await simulate_statefulset_ready(k8s, "orders-etcd")

    await eventually(lambda: get_object(k8s, "v1/pods", "orders-2") is None, what="the stuck pod restarted")
    assert get_object(k8s, "v1/pods", "orders-0") is not None and get_object(k8s, "v1/pods", "orders-1") is not None
    restarted = await eventually(lambda: events(k8s, "orders", "RestartingStuckPod"), what="RestartingStuckPod")
    assert "orders-2" in restarted[0]["message"]


async def test_a_change_the_api_server_refuses_is_in_the_status_and_not_claimed_applied(k8s, operator, nodes):
    """A refused patch (422) left observedGeneration behind while the status timer stamped Ready with the new
    generation: `kubectl wait --for=condition=Ready` returned at once, and nothing in the status said why."""
    await create_evs(k8s, "orders", replicas=3)
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    nodes.set_cluster("orders", leader_ordinal=0, replicas=3)
    await simulate_statefulset_ready(k8s, "orders")
    await eventually(lambda: evs(k8s)["status"].get("phase") == "Ready", what="phase Ready")

    await patch_evs(k8s, "orders", {"spec": {"scheduling": {"tolerations": [{"key": "pool", "operator": "Bogus"}]}}})
    refused = await eventually(lambda: events(k8s, "orders", "ApplyRejected"), what="ApplyRejected")
    assert refused[0]["type"] == "Warning" and "tolerations[0].operator" in refused[0]["message"]

    def degraded() -> dict | None:
        store = evs(k8s)
        return store if store["status"].get("phase") == "Degraded" else None
    store = await eventually(degraded, what="phase Degraded")
    assert "refused to apply generation 2" in store["status"]["message"]
    assert store["metadata"]["generation"] == 2 and store["status"]["observedGeneration"] == 1
    assert {c["type"]: c["observedGeneration"] for c in store["status"]["conditions"]} == {
        "Ready": 1, "Progressing": 1, "Degraded": 1}  # they describe what runs, not the refused spec

    await patch_evs(k8s, "orders", {"spec": {"scheduling": {"tolerations": []}}})  # fixed: applied, Ready again
    await eventually(lambda: evs(k8s)["status"].get("observedGeneration") == 3, timeout=30,  # within a retry
                     what="generation 3 applied")
    await simulate_statefulset_ready(k8s, "orders")
    await eventually(lambda: evs(k8s)["status"].get("phase") == "Ready" and all(
        c["observedGeneration"] == 3 for c in evs(k8s)["status"]["conditions"]), what="Ready at generation 3")


def test_only_a_pod_that_cannot_run_counts_as_stuck():
    from evstore.operator.reconcile import cannot_run
    starting = {"status": {"conditions": [{"type": "Ready", "status": "False"}],
                           "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    catching_up = {"status": {"conditions": [{"type": "Ready", "status": "False"}],
                              "containerStatuses": [{"state": {"running": {}}}]}}
    unschedulable = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}
    init_image = {"status": {"initContainerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}
    # a node that ran and crashed (an OOM kill, a failed probe) waits out its back-off: the kubelet restarts it
    crashed = {"status": {"containerStatuses": [{"name": "evstore", "restartCount": 1,
                                                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}
    # a sidecar's trouble is not the node's: the node serves
    sidecar = {"status": {"containerStatuses": [{"name": "evstore", "state": {"running": {}}},
                                                {"name": "proxy", "state": {"waiting": {"reason": "ErrImagePull"}}}]}}
    repulled = {"status": {"containerStatuses": [{"name": "evstore", "restartCount": 2,
                                                  "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}
    assert not any(map(cannot_run, (starting, catching_up, {}, crashed, sidecar, repulled)))
    assert cannot_run(unschedulable) and cannot_run(init_image)


async def test_invalid_spec_sets_failed_phase(k8s, operator):
    await create_evs(k8s, "broken", replicas=3, etcd={"managed": False})
    status = await eventually(lambda: (evs(k8s, "broken") or {}).get("status", {}).get("phase") == "Failed"
                              and evs(k8s, "broken")["status"], what="phase Failed")
    assert "needs etcd" in status["message"]
    assert (await eventually(lambda: events(k8s, "broken", "InvalidSpec")))[0]["type"] == "Warning"
    assert get_object(k8s, STS, "broken") is None


def _pvc(name: str, component: str = "node") -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/name": "evstore", "app.kubernetes.io/instance": "orders",
                                    "app.kubernetes.io/component": component}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}


async def test_delete_keeps_volumes_by_default(k8s, operator):
    await create_evs(k8s, "orders", replicas=1)
    await eventually(lambda: "evstore.io/finalizer" in evs(k8s)["metadata"].get("finalizers", []), what="finalizer")
    k8s.objects["v1/persistentvolumeclaims", NAMESPACE, "data-orders-0"] = _pvc("data-orders-0")

    await api(k8s, "DELETE", f"/apis/evstore.io/v1alpha1/namespaces/{NAMESPACE}/eventstores/orders")
    await eventually(lambda: evs(k8s) is None, what="EventStore gone")
    assert get_object(k8s, "v1/persistentvolumeclaims", "data-orders-0") is not None
    kept = await eventually(lambda: events(k8s, "orders", "VolumesKept"), what="VolumesKept")
    assert "1 PersistentVolumeClaims" in kept[0]["message"]


async def test_delete_removes_volumes_when_asked(k8s, operator):
    await create_evs(k8s, "orders", replicas=3, storage={"deleteOnResourceDeletion": True})
    await eventually(lambda: "evstore.io/finalizer" in evs(k8s)["metadata"].get("finalizers", []), what="finalizer")
    for name in ("data-orders-0", "data-orders-1", "data-orders-2"):
        k8s.objects["v1/persistentvolumeclaims", NAMESPACE, name] = _pvc(name)
    k8s.objects["v1/persistentvolumeclaims", NAMESPACE, "etcd-data-orders-etcd-0"] = _pvc(
        "etcd-data-orders-etcd-0", "etcd")
    k8s.objects["v1/persistentvolumeclaims", NAMESPACE, "data-other-0"] = dict(
        _pvc("data-other-0"), metadata={"name": "data-other-0", "namespace": NAMESPACE,
                                        "labels": {"app.kubernetes.io/instance": "other",
                                                   "app.kubernetes.io/name": "evstore"}})

    await api(k8s, "DELETE", f"/apis/evstore.io/v1alpha1/namespaces/{NAMESPACE}/eventstores/orders")
    await eventually(lambda: evs(k8s) is None, what="EventStore gone")
    for name in ("data-orders-0", "data-orders-1", "data-orders-2", "etcd-data-orders-etcd-0"):
        assert get_object(k8s, "v1/persistentvolumeclaims", name) is None, name
    assert get_object(k8s, "v1/persistentvolumeclaims", "data-other-0") is not None
    await eventually(lambda: events(k8s, "orders", "VolumesDeleted"), what="VolumesDeleted")


async def test_a_store_deleted_during_a_status_pass_goes_soon_after_it(k8s, operator, nodes):
    """kopf keeps the finalizer until a running timer has finished its pass, and by default looks again only
    after settings.background.cancellation_polling (60 s): a store deleted while the status timer waited for a
    node stayed a minute. The operator polls every second instead."""
    await create_evs(k8s, "orders", replicas=1)
    await eventually(lambda: "evstore.io/finalizer" in evs(k8s)["metadata"].get("finalizers", []), what="finalizer")
    nodes.cluster_delay = 0.5
    for _ in range(4):  # the passes before it have settled the status: the pass now waiting will patch nothing
        nodes.slow_answer.clear()
        await asyncio.wait_for(nodes.slow_answer.wait(), 15)
    await api(k8s, "DELETE", f"/apis/evstore.io/v1alpha1/namespaces/{NAMESPACE}/eventstores/orders")
    await eventually(lambda: evs(k8s) is None, timeout=10, what="EventStore gone")
