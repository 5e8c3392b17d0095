"""A small dict-in, dict-out Kubernetes client on kubernetes_asyncio (no generated models)."""
from __future__ import annotations

import base64
from typing import Any, Mapping

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

# kind -> (group, version, plural)
RESOURCES: dict[str, tuple[str, str, str]] = {
    "Secret": ("", "v1", "secrets"),
    "ConfigMap": ("", "v1", "configmaps"),
    "Service": ("", "v1", "services"),
    "Pod": ("", "v1", "pods"),
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    "StatefulSet": ("apps", "v1", "statefulsets"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
    "ServiceMonitor": ("monitoring.coreos.com", "v1", "servicemonitors"),
    "PrometheusRule": ("monitoring.coreos.com", "v1", "prometheusrules"),
    "EventStore": ("evstore.io", "v1alpha1", "eventstores"),
    "Lease": ("coordination.k8s.io", "v1", "leases"),
}


def collection_path(kind: str, namespace: str) -> str:
    group, version, plural = RESOURCES[kind]
    prefix = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


def object_path(kind: str, namespace: str, name: str, subresource: str | None = None) -> str:
    path = f"{collection_path(kind, namespace)}/{name}"
    return f"{path}/{subresource}" if subresource else path


async def load_configuration() -> k8s_client.Configuration:
    """In-cluster service account first, then the local kubeconfig."""
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        await k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


def secret_values(secret: Mapping[str, Any] | None) -> dict[str, str]:
    """A Secret's values, decoded (the API server stores stringData base64-encoded under data)."""
    if not secret:
        return {}
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


class Kube:
    def __init__(self, configuration: k8s_client.Configuration) -> None:
        self.api = k8s_client.ApiClient(configuration)

    async def close(self) -> None:
        await self.api.close()

    async def _call(self, method: str, path: str, *, body: Any = None, query: Mapping[str, str] | None = None,
                    content_type: str = "application/json") -> Any:
        return await self.api.call_api(
            path, method, query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body, response_types_map={200: "object", 201: "object", 202: "object"},
            auth_settings=["BearerToken"], _return_http_data_only=True)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", object_path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))}
        reply = await self._call("GET", collection_path(kind, namespace), query=query)
        # Filter here too: an API server honours labelSelector, test doubles may not.
        return [item for item in (reply or {}).get("items", [])
                if all(((item.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items())]

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return await self._call("POST", collection_path(manifest["kind"], meta["namespace"]), body=dict(manifest))

    async def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any],
                    subresource: str | None = None) -> dict[str, Any]:
        return await self._call("PATCH", object_path(kind, namespace, name, subresource), body=dict(patch),
                                content_type="application/merge-patch+json")

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            await self._call("DELETE", object_path(kind, namespace, name))
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
