"""Reconcile fidelity (issue 10, point 8), with the real kopf operator against kmock.

The emulator canonicalises quantities as the API server does (kmock_emulator.py); kmock has no
StatefulSet controller and no volume provisioner, so the tests create the claims a controller would.
"""
from __future__ import annotations

from evs_helpers import (EVS, NAMESPACE, STS, api, create_evs, events, eventually, get_object, patch_evs,
                         simulate_statefulset_ready, sts_path)

PVC = "v1/persistentvolumeclaims"


def _rv(k8s, resource, name):
    return get_object(k8s, resource, name)["metadata"]["resourceVersion"]


async def test_canonicalised_quantities_do_not_cause_a_patch_on_every_pass(k8s, operator, nodes):
    await create_evs(k8s, "orders", replicas=3, resources={"requests": {"cpu": "0.5", "memory": "1024Mi"},
                                                           "limits": {"memory": 2147483648}})
    sts = await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    assert sts["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "500m",
                                                                                          "memory": "1Gi"}
    await eventually(lambda: get_object(k8s, STS, "orders-etcd"), what="etcd")
    await eventually(lambda: get_object(k8s, EVS, "orders").get("status", {}).get("observedGeneration") == 1,
                     what="the spec accepted (the timer repairs drift from then on)")
    before = {name: _rv(k8s, STS, name) for name in ("orders", "orders-etcd")}
    asked = len(nodes.asked)
    await eventually(lambda: len(nodes.asked) >= asked + 9, what="three more status passes")
    assert {name: _rv(k8s, STS, name) for name in before} == before
    assert not [e for e in events(k8s, "orders", "Updated") if "StatefulSet" in e["message"]]


def _claim(name: str, size: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "evstore",
                                                  "app.kubernetes.io/instance": "orders",
                                                  "app.kubernetes.io/component": "node"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}


async def test_storage_grows_claims_and_refuses_a_class_change(k8s, operator):
    await create_evs(k8s, "orders", replicas=2, storage={"size": "1Gi", "storageClassName": "standard"})
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    for i in range(2):
        await api(k8s, "POST", f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims",
                  _claim(f"data-orders-{i}", "1Gi"))
    await patch_evs(k8s, "orders", {"spec": {"storage": {"size": "2Gi"}}})
    for i in range(2):
        await eventually(lambda: get_object(k8s, PVC, f"data-orders-{i}")["spec"]["resources"]["requests"]
                         ["storage"] == "2Gi", what=f"data-orders-{i} grown")
    await eventually(lambda: events(k8s, "orders", "VolumeExpanding"), what="VolumeExpanding")

    await patch_evs(k8s, "orders", {"spec": {"storage": {"storageClassName": "fast"}}})
    refused = await eventually(lambda: events(k8s, "orders", "StorageClassChangeRefused"), what="refusal")
    assert refused[0]["type"] == "Warning" and "'fast'" in refused[0]["message"]
    claims = get_object(k8s, STS, "orders")["spec"]["volumeClaimTemplates"]
    assert claims[0]["spec"]["storageClassName"] == "standard"

    await patch_evs(k8s, "orders", {"spec": {"storage": {"size": "1Gi", "storageClassName": "standard"}}})
    shrink = await eventually(lambda: events(k8s, "orders", "VolumeShrinkRefused"), what="shrink refused")
    assert shrink[0]["type"] == "Warning"
    assert get_object(k8s, PVC, "data-orders-0")["spec"]["resources"]["requests"]["storage"] == "2Gi"


async def test_kubectl_scale_of_the_statefulset_is_reverted_with_a_warning(k8s, operator):
    await create_evs(k8s, "orders", replicas=3)
    await eventually(lambda: get_object(k8s, STS, "orders"), what="statefulset")
    await eventually(lambda: get_object(k8s, EVS, "orders")
                     .get("status", {}).get("observedGeneration") == 1, what="accepted")
    await api(k8s, "PATCH", sts_path("orders"), {"spec": {"replicas": 1}})
    # Playing the StatefulSet controller: two pods removed, the one left up to date and ready (the
    # operator grows a StatefulSet only when its pods run the current template).
    await simulate_statefulset_ready(k8s, "orders")
    await eventually(lambda: get_object(k8s, STS, "orders")["spec"]["replicas"] == 3, what="reverted")
    warning = (await eventually(lambda: events(k8s, "orders", "StatefulSetScaleReverted"), what="event"))[0]
    assert warning["type"] == "Warning"
    assert "scaled to 1" in warning["message"] and "below the 2 in-sync replicas" in warning["message"]


async def test_a_two_replica_store_can_still_be_drained(k8s, operator):
    await create_evs(k8s, "orders", replicas=2)
    pdb = await eventually(lambda: get_object(k8s, "policy/v1/poddisruptionbudgets", "orders"), what="PDB")
    assert pdb["spec"]["minAvailable"] == 1
    warning = (await eventually(lambda: events(k8s, "orders", "DisruptionAllowed"), what="Warning"))[0]
    assert warning["type"] == "Warning" and "503" in warning["message"]
