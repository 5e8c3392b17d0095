"""Isolation between stores (issue 10, point 6), with the real kopf operator against kmock."""
from __future__ import annotations

from evs_helpers import EVS, NAMESPACE, api, create_evs, events, eventually, get_object, patch_evs


def _failed(k8s, name):
    status = (get_object(k8s, EVS, name) or {}).get("status") or {}
    return status.get("phase") == "Failed" and status


async def test_a_store_named_like_another_stores_child_is_refused(k8s, operator):
    created = await create_evs(k8s, "orders", replicas=3)
    etcd_service = await eventually(lambda: get_object(k8s, "v1/services", "orders-etcd"), what="etcd Service")
    await create_evs(k8s, "orders-etcd")
    status = await eventually(lambda: _failed(k8s, "orders-etcd"), what="orders-etcd Failed")
    assert "children of the store 'orders'" in status["message"]
    assert get_object(k8s, "v1/services", "orders-etcd") == etcd_service
    assert etcd_service["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]


async def test_an_object_owned_by_someone_else_is_not_taken_over(k8s, operator):
    foreign = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "solo-peers", "labels": {"app": "mine"},
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                                 "uid": "0000-web", "controller": True}]},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    await api(k8s, "POST", f"/api/v1/namespaces/{NAMESPACE}/services", foreign)
    before = get_object(k8s, "v1/services", "solo-peers")
    await create_evs(k8s, "solo")
    status = await eventually(lambda: _failed(k8s, "solo"), what="solo Failed")
    assert "Service solo-peers exists and belongs to Deployment web" in status["message"]
    assert get_object(k8s, "v1/services", "solo-peers") == before
    await eventually(lambda: events(k8s, "solo", "InvalidSpec"), what="InvalidSpec event")


async def test_a_running_store_keeps_its_store_id(k8s, operator):
    """A store created before ids were namespaced keeps its etcd prefix, with a Warning."""
    await create_evs(k8s, "orders")
    config = await eventually(lambda: get_object(k8s, "v1/configmaps", "orders-config"), what="ConfigMap")
    assert config["data"]["EVSTORE_STORE_ID"] == f"{NAMESPACE}.orders"
    await api(k8s, "PATCH", f"/api/v1/namespaces/{NAMESPACE}/configmaps/orders-config",
              {"data": {"EVSTORE_STORE_ID": "orders"}})  # as the previous operator version wrote it
    await patch_evs(k8s, "orders", {"spec": {"logLevel": "debug"}})
    await eventually(lambda: get_object(k8s, "v1/configmaps", "orders-config")["data"]["EVSTORE_LOG_LEVEL"]
                     == "debug", what="the new log level")
    assert get_object(k8s, "v1/configmaps", "orders-config")["data"]["EVSTORE_STORE_ID"] == "orders"
    warned = await eventually(lambda: events(k8s, "orders", "StoreIdNotNamespaced"), what="Warning")
    assert warned[0]["type"] == "Warning"
