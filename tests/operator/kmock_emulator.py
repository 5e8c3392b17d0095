"""A Kubernetes API stand-in for operator tests: kmock 0.8's KubernetesEmulator plus the fidelity it lacks.

There is no kube-apiserver on this machine, so the real kopf operator runs against this emulator on
127.0.0.1. kmock has no controllers: no StatefulSet controller (tests patch StatefulSet status and
create Pods/PVCs themselves) and no garbage collector (owner references are asserted, not followed).

Gaps of kmock 0.8 closed here (adapted from /work/shared/examples/kmock_emulator.py):
- CREATE: namespace from the URL, uid, creationTimestamp, generation, resourceVersion,
  metadata.generateName (kopf posts Events with it); reply 201.
- UPDATE: bump resourceVersion (and generation when the spec changes); JSON patches (kopf removes
  finalizers with a `test` of resourceVersion) answer 422 on a failed test instead of 500.
- PUT: not handled by kmock 0.8 at all -> replace.
- LIST/WATCH: the list carries the real resourceVersion and a watch from it replays only newer
  objects (kmock replays every object, so kopf saw stale duplicates); events between the replay and
  the bus subscription were lost.
- GET /api/v1/namespaces crashes kmock's path parser; `watch=True` (Python bool) is not recognised.

What the API server does and kmock does not, simulated here:
- Secrets: `stringData` is write-only; the server merges it base64-encoded into `data` and never
  returns it (the operator must read `data`, as against a real cluster).
- Optimistic concurrency: an update carrying metadata.resourceVersion that is not the stored one
  answers 409 Conflict (kmock 0.8 applies it).
- StatefulSets: a toleration's operator is Exists or Equal (one of the pod template's checks; 422).
- PodDisruptionBudgets: minAvailable and maxUnavailable cannot both be set (checked on the object as a
  merge patch would leave it: 422, as the server's validation answers).
- Quantities: the server stores resource quantities (under `requests`/`limits`) in canonical form
  ("0.5" -> "500m", "1024Mi" -> "1Gi", 2 -> "2"); `canonical_quantity` does the same, so a test sees
  whether the operator patches on every pass because of it.
"""
from __future__ import annotations

import base64
import datetime
import itertools
import uuid
from typing import Any

import jsonpatch
import kmock
from kmock._internal import enums, parsing

_orig_parse_path = parsing.parse_path
_orig_guess_k8s = parsing.guess_k8s


def _parse_path(path: str) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    # /api/v1/namespaces[/name[/status|finalize]] is the cluster-scoped Namespace resource.
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 5 and (
            len(parts) < 5 or parts[4] in ("status", "finalize")):
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) > 3 else None,
                                  parts[4] if len(parts) > 4 else None)
    return _orig_parse_path(path)


def _guess_k8s(k8s: parsing.ParsedPath, method: Any, query: dict[str, str]) -> Any:
    if str(query.get("watch", "")).lower() in ("true", "1"):
        query = dict(query, watch="true")
    return _orig_guess_k8s(k8s, method, query)


parsing.parse_path = _parse_path
parsing.guess_k8s = _guess_k8s


_BINARY = [("Ei", 2 ** 60), ("Pi", 2 ** 50), ("Ti", 2 ** 40), ("Gi", 2 ** 30), ("Mi", 2 ** 20), ("Ki", 2 ** 10)]
_DECIMAL = [("E", 18), ("P", 15), ("T", 12), ("G", 9), ("M", 6), ("k", 3), ("", 0), ("m", -3), ("u", -6), ("n", -9)]


def canonical_quantity(value: Any) -> str:
    """A quantity as the API server writes it back: the largest suffix with an integer mantissa, in the
    input's format (binary SI when it had a binary suffix)."""
    from decimal import Decimal

    from evstore.operator.quantity import parse_quantity
    amount = parse_quantity(value)
    if isinstance(value, str) and value.strip()[-2:] in dict(_BINARY) and amount == amount.to_integral():
        for suffix, factor in _BINARY:
            if amount % factor == 0:
                return f"{int(amount / factor)}{suffix}"
        return str(int(amount))
    for suffix, exponent in _DECIMAL:
        mantissa = amount / (Decimal(10) ** exponent)
        if mantissa == mantissa.to_integral() and mantissa != 0:
            return f"{int(mantissa)}{suffix}"
    return "0"


def _canonicalise(obj: Any, inside: bool = False) -> Any:
    if isinstance(obj, dict):
        return {k: _canonicalise(v, inside or k in ("requests", "limits")) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_canonicalise(v, inside) for v in obj]
    if inside and obj is not None:
        return canonical_quantity(obj)
    return obj


class K8sEmulator(kmock.KubernetesEmulator):
    _rv = itertools.count(1000)

    _last_rv = 999

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback["put"] << self._serve_replace

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    async def _serve_list(self, request: kmock.Request) -> Any:
        reply = await super()._serve_list(request)
        reply["metadata"]["resourceVersion"] = str(self._last_rv)
        return reply

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and isinstance(request.data, dict):
            if request.resource.plural == "secrets" and "stringData" in request.data:
                encoded = {k: base64.b64encode(str(v).encode()).decode()
                           for k, v in (request.data.pop("stringData") or {}).items()}
                request.data["data"] = {**(request.data.get("data") or {}), **encoded}
            # Built-in kinds only: a custom resource's fields are stored as sent.
            if "spec" in request.data and request.resource.group != "evstore.io":
                request.data["spec"] = _canonicalise(request.data["spec"])
            if request.resource.plural == "poddisruptionbudgets":
                self._check_budget(request)
            if request.resource.plural == "statefulsets":
                self._check_tolerations(request)
            md = request.data.setdefault("metadata", {})
            if request.action == enums.action.CREATE:
                if request.namespace and not md.get("namespace"):
                    md["namespace"] = request.namespace
                if not md.get("name") and md.get("generateName"):
                    md["name"] = f"{md['generateName']}{uuid.uuid4().hex[:8]}"
                md.setdefault("uid", str(uuid.uuid4()))
                md.setdefault("creationTimestamp",
                              datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                md.setdefault("generation", 1)
                md["resourceVersion"] = self._next_rv()
            elif request.action == enums.action.UPDATE:
                key = (request.resource, request.namespace, request.name)
                expected = md.get("resourceVersion")
                if expected and key in self.objects and not self.objects[key].deleted and \
                        self.objects[key].get("metadata", {}).get("resourceVersion") != expected:
                    raise kmock.KubernetesError(status=409, reason="Conflict",
                                                message="the object has been modified")
                md["resourceVersion"] = self._next_rv()
                if ("spec" in request.data and request.subresource is None
                        and key in self.objects and not self.objects[key].deleted):
                    current = self.objects[key].get("metadata", {}).get("generation", 1)
                    md["generation"] = int(current) + 1
        elif request.resource is not None and isinstance(request.data, list):
            if request.action == enums.action.UPDATE:
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    try:
                        jsonpatch.apply_patch(self.objects[key].raw, request.data, in_place=False)
                    except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchTestFailed) as exc:
                        raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
                    request.data.append({"op": "add", "path": "/metadata/resourceVersion",
                                         "value": self._next_rv()})
        return await super()._handle(request)

    def _check_budget(self, request: kmock.Request) -> None:
        """The API server's validation of a PodDisruptionBudget as it would be stored (a merge patch applied
        to the stored object): minAvailable and maxUnavailable are mutually exclusive."""
        spec = request.data.get("spec") or {}
        key = (request.resource, request.namespace, request.name)
        if request.action == enums.action.UPDATE and key in self.objects and not self.objects[key].deleted:
            stored = self.objects[key].raw.get("spec") or {}
            spec = {k: v for k, v in {**stored, **spec}.items() if v is not None}
        if "minAvailable" in spec and "maxUnavailable" in spec:
            raise kmock.KubernetesError(status=422, reason="Invalid",
                                        message="spec: Invalid value: minAvailable and maxUnavailable cannot be "
                                                "both set")

    @staticmethod
    def _check_tolerations(request: kmock.Request) -> None:
        """One of the API server's pod template checks the CRD cannot make (its scheduling blocks are free-form):
        a toleration's operator is Exists or Equal."""
        template = ((request.data.get("spec") or {}).get("template") or {}).get("spec") or {}
        for i, toleration in enumerate(template.get("tolerations") or ()):
            if toleration.get("operator", "Equal") not in ("Exists", "Equal"):
                raise kmock.KubernetesError(
                    status=422, reason="Invalid",
                    message=f'StatefulSet.apps is invalid: spec.template.spec.tolerations[{i}].operator: '
                            f'Unsupported value: "{toleration["operator"]}": supported values: "Equal", "Exists"')

    async def _serve_watch(self, request: kmock.Request) -> Any:
        # kmock 0.8 subscribes to the event bus only after replaying the existing objects, so a change
        # made in between is never streamed (a real watch resumes from the listed resourceVersion).
        # Here the bus position is marked under the same lock as the snapshot.
        yield b""
        assert request.resource is not None
        bus = self._buses[request.resource]
        async with self._lock:
            objs = self._KubernetesEmulator__get_objs(request, strict=False)
            since = request.params.get("resourceVersion", "")
            since_rv = int(since) if since.isdigit() else -1
            # Like a real watch from a listed resourceVersion: replay only what changed after it.
            replay = [{"type": "ADDED", "object": obj.raw} for obj in objs if not obj.deleted
                      and int(obj.raw.get("metadata", {}).get("resourceVersion") or 0) > since_rv]
            mark = await bus.mark()
        try:
            for event in replay:
                yield event
            async for event in bus.stream(since=mark):
                meta = event.get("object", {}).get("metadata", {})
                if self._KubernetesEmulator__check(request, request.resource, meta.get("namespace"),
                                                   meta.get("name"), strict=False):
                    yield event
        finally:
            await bus.unmark(mark)

    async def _serve_create(self, request: kmock.Request) -> Any:
        return kmock.Response(status=201, payload=await super()._serve_create(request))

    async def _serve_replace(self, request: kmock.Request) -> Any:
        if request.resource is None or request.name is None:
            raise kmock.KubernetesEndpointNotFoundError()
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            old = self.objects[key].raw
            new = dict(request.data)
            md = dict(new.get("metadata", {}))
            for k in ("uid", "creationTimestamp", "namespace"):
                if k in old.get("metadata", {}):
                    md[k] = old["metadata"][k]
            md["resourceVersion"] = self._next_rv()
            md["generation"] = int(old.get("metadata", {}).get("generation", 1)) + (new.get("spec") != old.get("spec"))
            if request.subresource == "status":
                new = dict(old, status=new.get("status"),
                           metadata=dict(old["metadata"], resourceVersion=md["resourceVersion"]))
            else:
                new["metadata"] = md
                if "status" in old:
                    new["status"] = old["status"]
            self.objects[key].create(new)
            raw = self.objects[key].raw
            await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        return raw


RESOURCES: dict[str, dict[str, Any]] = {
    "evstore.io/v1alpha1/eventstores": dict(kind="EventStore", singular="eventstore", namespaced=True,
                                            shortnames={"evs"}, subresources={"status", "scale"}),
    "v1/secrets": dict(kind="Secret", namespaced=True),
    "v1/configmaps": dict(kind="ConfigMap", namespaced=True),
    "v1/services": dict(kind="Service", namespaced=True),
    "v1/pods": dict(kind="Pod", namespaced=True, subresources={"status"}),
    "v1/persistentvolumeclaims": dict(kind="PersistentVolumeClaim", namespaced=True),
    "v1/events": dict(kind="Event", namespaced=True),
    "coordination.k8s.io/v1/leases": dict(kind="Lease", namespaced=True),
    "apps/v1/statefulsets": dict(kind="StatefulSet", namespaced=True, subresources={"status", "scale"}),
    "policy/v1/poddisruptionbudgets": dict(kind="PodDisruptionBudget", namespaced=True),
    "networking.k8s.io/v1/networkpolicies": dict(kind="NetworkPolicy", namespaced=True),
    "monitoring.coreos.com/v1/servicemonitors": dict(kind="ServiceMonitor", namespaced=True),
    # Discovery only (kopf looks them up; the operator never lists them with scanning disabled).
    "v1/namespaces": dict(kind="Namespace", namespaced=False),
    "apiextensions.k8s.io/v1/customresourcedefinitions": dict(kind="CustomResourceDefinition", namespaced=False),
}
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


def declare_resources(emulator: K8sEmulator) -> None:
    for key, info in RESOURCES.items():
        emulator.resources[key] = kmock.ResourceInfo(verbs=VERBS, **info)
