"""Helpers shared by the operator tests (bounded polling, EventStore requests, the fake node's state)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kmock_emulator import K8sEmulator

NAMESPACE = "default"
EVS = "evstore.io/v1alpha1/eventstores"
STS = "apps/v1/statefulsets"


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `check` until it returns a truthy value (or stops raising AssertionError/KeyError)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except (AssertionError, KeyError, ValueError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}") from last_error
        await asyncio.sleep(0.05)


def token_for(role: str) -> str:
    """The API token the operator fixture generates for a role (the node accepts only 16+ characters)."""
    return f"test-{role}-token-0123456789"


@dataclass
class FakeNodes:
    """Per-pod replies of the stand-in node server. Like a node started with the operator's tokens
    file, it answers 401 to a request without the admin token (and records it in `unauthorized`)."""
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    admin_token: str = token_for("admin")
    unauthorized: list[str] = field(default_factory=list)
    step_down_status: int = 200
    step_downs: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    url: str = ""
    on_step_down: Callable[[str], None] | None = None
    cluster_delay: float = 0.0  # seconds each /v1/cluster answer takes
    slow_answer: asyncio.Event = field(default_factory=asyncio.Event)  # set when a delayed answer begins

    def set_cluster(self, store: str, leader_ordinal: int, replicas: int, *, epoch: int = 7,
                    isr: list[int] | None = None, position: int = 42, min_in_sync: int | None = None) -> None:
        leader = f"{store}-{leader_ordinal}"
        members = [f"{store}-{i}" for i in range(replicas)]
        in_sync = members if isr is None else [f"{store}-{i}" for i in isr]
        for pod in members:
            self.clusters[pod] = {
                "store": store, "node": pod, "role": "leader" if pod == leader else "follower",
                "leader": {"node": leader, "url": f"http://{leader}.{store}-peers.default.svc:7113"},
                "epoch": epoch, "committedPosition": position,
                "minInSync": min_in_sync if min_in_sync is not None else replicas // 2 + 1,
                "isr": in_sync,
                "members": [{"node": m, "url": "", "role": "follower", "position": position,
                             "inSync": m in in_sync, "lag": 0, "lastSeen": "2026-01-01T00:00:00.000000Z"}
                            for m in members],
            }


def evs_body(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "evstore.io/v1alpha1", "kind": "EventStore",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


async def create_evs(k8s: K8sEmulator, name: str, **spec: Any) -> dict[str, Any]:
    async with k8s.post(f"/apis/evstore.io/v1alpha1/namespaces/{NAMESPACE}/eventstores",
                        json=evs_body(name, **spec)) as response:
        assert response.status == 201, await response.text()
        return await response.json()


async def patch_evs(k8s: K8sEmulator, name: str, patch: dict[str, Any], subresource: str = "") -> None:
    path = f"/apis/evstore.io/v1alpha1/namespaces/{NAMESPACE}/eventstores/{name}"
    async with k8s.patch(path + (f"/{subresource}" if subresource else ""), json=patch,
                         headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status == 200, await response.text()



def get_object(k8s: K8sEmulator, resource: str, name: str) -> dict[str, Any] | None:
    """The live object, or None when absent or deleted."""
    try:
        obj = k8s.objects[resource, NAMESPACE, name]
    except KeyError:
        return None
    return None if obj.deleted else obj.raw


def events(k8s: K8sEmulator, store: str, reason: str | None = None) -> list[dict[str, Any]]:
    """Events the operator posted about one EventStore (optionally of one reason)."""
    found = []
    for (resource, _, _), obj in list(k8s.objects.items()):
        if resource == "v1/events" and not obj.deleted:
            raw = obj.raw
            if raw.get("involvedObject", {}).get("name") == store and reason in (None, raw.get("reason")):
                found.append(raw)
    return found


async def api(k8s: K8sEmulator, method: str, path: str, body: Any = None) -> Any:
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
    async with k8s.request(method, path, json=body, headers=headers) as response:
        assert response.status < 300, await response.text()
        return await response.json()


def sts_path(name: str) -> str:
    return f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{name}"


async def simulate_statefulset_ready(k8s: K8sEmulator, name: str, ready: int | None = None,
                                     revision: str = "rev-1") -> None:
    """Play the StatefulSet controller: report the pods as created, up to date and ready."""
    sts = get_object(k8s, STS, name)
    assert sts is not None
    replicas = sts["spec"]["replicas"]
    await api(k8s, "PATCH", sts_path(name) + "/status", {"status": {
        "observedGeneration": sts["metadata"]["generation"], "replicas": replicas,
        "readyReplicas": replicas if ready is None else ready, "updatedReplicas": replicas,
        "currentRevision": revision, "updateRevision": revision}})
