"""kopf handlers for EventStore resources.

`build_registry(deps)` returns a registry with every handler; `deps` carries what tests replace
(how to reach the API server, how to talk to a node, the timer interval).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import pathlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator, Mapping

import kopf
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.client.exceptions import ApiException

from evstore.operator import manifests, status
from evstore.operator.kube import Kube, load_configuration, secret_values
from evstore.operator.metrics import OperatorMetrics
from evstore.operator.quantity import parse_quantity
from evstore.operator.spec import (GROUP, PLURAL, TOKEN_ROLES, TOKENS_FILE_KEY, VERSION, SpecError, StoreSpec,
                                   parse_spec)

FINALIZER = "evstore.io/finalizer"
REVISION_LABEL = "controller-revision-hash"
DEFAULT_DASHBOARDS_DIR = "/etc/evstore/dashboards"
# Set to "true" on an EventStore to generate new Secrets after a generated one was deleted.
REGENERATE_ANNOTATION = "evstore.io/regenerate-secrets"
Manifest = dict[str, Any]


def load_dashboards() -> dict[str, str]:
    """Dashboard JSON files shipped next to the operator (the chart mounts them), by file name."""
    directory = pathlib.Path(os.environ.get("EVSTORE_DASHBOARDS_DIR", DEFAULT_DASHBOARDS_DIR))
    if not directory.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(directory.glob("*.json"))}


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class OperatorDeps:
    kube_configuration: Callable[[], Awaitable[Configuration]] = load_configuration
    fetch_json: status.FetchJson = status.http_get_json
    post: status.PostEmpty = status.http_post
    cluster_url: Callable[[str, str, str], str] = status.cluster_url
    step_down_url: Callable[[str, str, str], str] = status.step_down_url
    status_interval: float = 10.0
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    dashboards: Callable[[], Mapping[str, str]] = load_dashboards
    new_secret: Callable[[], str] = lambda: secrets.token_urlsafe(32)
    new_token: Callable[[str], str] = lambda role: secrets.token_urlsafe(32)
    now: Callable[[], str] = utc_now


@dataclass
class OperatorState:
    deps: OperatorDeps
    kube: Kube | None = None
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    problems: dict[tuple[str, str], str] = field(default_factory=dict)  # lasting, but not a spec error
    phases: dict[tuple[str, str], str] = field(default_factory=dict)
    warned: set[tuple[str, str, str]] = field(default_factory=set)

    def warn_once(self, body: Any, reason: str, message: str) -> None:
        """A Warning event for a lasting condition: once per store and operator run, not every pass."""
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""), reason)
        if key not in self.warned:
            self.warned.add(key)
            kopf.warn(body, reason=reason, message=message)

    def client(self) -> Kube:
        if self.kube is None:
            raise kopf.TemporaryError("the Kubernetes client is not ready yet", delay=1)
        return self.kube

    def track(self, namespace: str, name: str, phase: str | None) -> None:
        key = (namespace, name)
        if phase is None:
            self.phases.pop(key, None)
            self.failures.pop(key, None)
            self.problems.pop(key, None)
            self.warned = {w for w in self.warned if w[:2] != key}
        else:
            self.phases[key] = phase
        self.deps.metrics.managed_stores.set(len(self.phases))
        self.deps.metrics.ready_stores.set(sum(p == status.READY for p in self.phases.values()))


@contextlib.contextmanager
def measured(metrics: OperatorMetrics, handler: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    except kopf.TemporaryError:
        metrics.reconciles.labels(handler, "retry").inc()
        raise
    except Exception:
        metrics.reconciles.labels(handler, "error").inc()
        metrics.reconcile_errors.labels(handler).inc()
        raise
    else:
        metrics.reconciles.labels(handler, "ok").inc()
    finally:
        metrics.reconcile_duration.labels(handler).observe(time.perf_counter() - started)


# ---- steps ---------------------------------------------------------------------------------------

async def apply(kube: Kube, desired: Mapping[str, Any], body: Any,
                seen: Callable[[Mapping[str, Any]], None] | None = None) -> str | None:
    """Create the object if absent, patch it if it differs; report what was done (for an Event).
    `seen` is shown the existing object, as read right before the patch."""
    kind, meta = desired["kind"], desired["metadata"]
    actual = await kube.get(kind, meta["namespace"], meta["name"])
    if actual is not None and seen is not None:
        seen(actual)
    if actual is None:
        try:
            await kube.create(desired)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return None  # created meanwhile by a concurrent pass; the next pass compares it
        kopf.info(body, reason="Created", message=f"Created {kind} {meta['name']}")
        return "created"
    if conflict := manifests.foreign_owner(dict(desired), actual):
        raise SpecError(f"{conflict}; the operator does not take it over (rename or remove it)")
    change = manifests.patch_for(dict(desired), actual)
    if change is None:
        return None
    await kube.patch(kind, meta["namespace"], meta["name"], change)
    kopf.info(body, reason="Updated", message=f"Updated {kind} {meta['name']} ({', '.join(_paths(change))})")
    return "updated"


def _paths(patch: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in patch.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping) and key in ("spec", "metadata"):
            out += _paths(value, path)
        else:
            out.append(path)
    return out


class SecretLost(Exception):
    """A generated Secret is gone while pods still use its old value: regenerating it would leave the
    next restarted pod unable to talk to the others (cluster secret) or lock every client out (tokens)."""


async def ensure_generated_secret(state: OperatorState, desired: Manifest, body: Any, *,
                                  in_use: bool, regenerate: bool) -> dict[str, str]:
    """The values of a generated Secret, created with `desired`'s values when absent (and not in use)."""
    kube = state.client()
    meta = desired["metadata"]
    actual = await kube.get("Secret", meta["namespace"], meta["name"])
    if actual is None and in_use and not regenerate:
        raise SecretLost(f"Secret {meta['name']} was deleted while the store's pods use its value; recreate it "
                         f"with that value, or annotate the EventStore with {REGENERATE_ANNOTATION}=true to "
                         f"generate new values (every pod restarts)")
    await apply(kube, desired, body)
    if actual is None:
        return dict(desired["stringData"])
    return secret_values(actual)


async def ensure_secrets(state: OperatorState, store: StoreSpec, owner: Mapping[str, Any], body: Any, *,
                         in_use: bool, regenerate: bool) -> str:
    """The cluster secret and the API tokens, generated unless the spec names them; their digest."""
    kube = state.client()
    ref = store.secret_ref
    if store.cluster_secret_ref is not None:
        cluster = secret_values(await kube.get("Secret", store.namespace, ref.name))
        if ref.key not in cluster:
            raise SpecError(f"spec.clusterSecretRef: Secret {ref.name} with key {ref.key} does not exist")
    else:
        cluster = await ensure_generated_secret(
            state, manifests.owned(manifests.cluster_secret(store, state.deps.new_secret()), owner), body,
            in_use=in_use, regenerate=regenerate)
    if store.tokens_secret_name is not None:
        tokens = secret_values(await kube.get("Secret", store.namespace, store.tokens_secret))
        missing = [key for key in (TOKENS_FILE_KEY, "admin") if not tokens.get(key)]
        if missing:
            raise SpecError(f"spec.auth.tokensSecretRef: Secret {store.tokens_secret} needs the keys "
                            f"{TOKENS_FILE_KEY} ('TOKEN ROLE' lines) and admin (the operator's token); "
                            f"missing: {', '.join(missing)}")
    else:
        generated = {role: state.deps.new_token(role) for role in TOKEN_ROLES}
        tokens = await ensure_generated_secret(
            state, manifests.owned(manifests.api_tokens_secret(store, generated), owner), body,
            in_use=in_use, regenerate=regenerate)
    # The pods read only the cluster secret's key and the tokens file.
    return manifests.secrets_digest({ref.key: cluster.get(ref.key, "")},
                                    {TOKENS_FILE_KEY: tokens.get(TOKENS_FILE_KEY, "")})


async def admin_token(state: OperatorState, store: StoreSpec) -> str | None:
    """The token the operator calls the store's nodes with (None while its Secret is missing)."""
    values = secret_values(await state.client().get("Secret", store.namespace, store.tokens_secret))
    return values.get("admin")


async def with_running_store_id(state: OperatorState, store: StoreSpec, uid: str, body: Any) -> StoreSpec:
    """The store with the id its nodes already use (from our ConfigMap), if any: a running store's id
    is never changed, since old and new pods would elect leaders under two etcd key prefixes."""
    config = await state.client().get("ConfigMap", store.namespace, manifests.configmap_name(store.name))
    owners = ((config or {}).get("metadata") or {}).get("ownerReferences") or ()
    running = ((config or {}).get("data") or {}).get("EVSTORE_STORE_ID")
    if not running or not any(r.get("uid") == uid for r in owners) or running == store.node_store_id:
        return store
    if "." not in running:
        state.warn_once(body, "StoreIdNotNamespaced",
                        f"this store keeps its etcd key prefix {running!r} (created before store ids "
                        f"included the namespace): another store named {store.name!r} in another "
                        f"namespace must not share its etcd")
    return dataclasses.replace(store, store_id=running)


async def ensure_children(state: OperatorState, store: StoreSpec, uid: str, body: Any, *,
                          repair: bool = False) -> list[str]:
    """Create or patch every child. `repair`: a pass of the timer (the spec was already accepted), so a
    StatefulSet of another size was scaled behind the EventStore's back."""
    kube = state.client()
    key = (store.namespace, store.name)
    owner = manifests.owner_reference(store.name, uid)
    sts = await kube.get("StatefulSet", store.namespace, manifests.statefulset_name(store.name))
    regenerate = ((body.get("metadata") or {}).get("annotations") or {}).get(REGENERATE_ANNOTATION) == "true"
    try:
        digest = await ensure_secrets(state, store, owner, body, in_use=sts is not None, regenerate=regenerate)
        state.problems.pop(key, None)
    except SecretLost as lost:
        digest = None
        state.problems[key] = str(lost)
        state.warn_once(body, "SecretMissing", str(lost))
    if sts is not None:
        check_storage_class(state, store, sts, body)
    if manifests.pdb_blocks_writes(store):
        state.warn_once(body, "DisruptionAllowed",
                        f"with {store.replicas} replicas and minInSync {store.required_in_sync}, the "
                        f"PodDisruptionBudget still lets one pod be evicted (or no node could ever be "
                        f"drained): writes answer 503 while it is down")
    dashboards = state.deps.dashboards() if store.dashboards else {}
    changed = []
    for child in manifests.desired_children(store, dashboards=dashboards, secrets=digest or ""):
        if digest is None and child["kind"] == "StatefulSet" and child["metadata"]["name"] == store.name:
            continue  # keep the running pods as they are until the Secret is back
        is_nodes = child["kind"] == "StatefulSet" and child["metadata"]["name"] == store.name
        seen = (lambda actual: revert_outside_scale(store, actual, body)) if repair and is_nodes else None
        try:
            if await apply(kube, manifests.owned(child, owner), body, seen):
                changed.append(f"{child['kind']}/{child['metadata']['name']}")
        except ApiException as exc:
            if child["kind"] == "ServiceMonitor" and exc.status == 404:
                state.warn_once(body, "ServiceMonitorUnavailable",
                                "monitoring.serviceMonitor is set but the ServiceMonitor CRD "
                                "(Prometheus Operator) is not installed")
                continue
            raise
    return changed


def check_storage_class(state: OperatorState, store: StoreSpec, sts: Mapping[str, Any], body: Any) -> None:
    """A volume's storage class cannot change: a new class in the spec is refused (the volumes stay)."""
    templates = (sts.get("spec") or {}).get("volumeClaimTemplates") or [{}]
    running = (templates[0].get("spec") or {}).get("storageClassName")
    if store.storage_class != running:
        state.warn_once(body, "StorageClassChangeRefused",
                        f"spec.storage.storageClassName {store.storage_class!r} differs from the class the "
                        f"volumes were created with ({running!r}); volumes keep their class (migrate the "
                        f"data to a new store to change it)")


async def expand_volumes(state: OperatorState, store: StoreSpec, body: Any) -> list[str]:
    """Grow the nodes' PersistentVolumeClaims to spec.storage.size (volumes can grow, never shrink);
    the StatefulSet's claim template is immutable, so claims of pods created later are grown here too."""
    kube = state.client()
    wanted = parse_quantity(store.storage_size)
    grown = []
    for claim in await kube.list("PersistentVolumeClaim", store.namespace, manifests.selector_labels(store.name)):
        name = claim["metadata"]["name"]
        size = (((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
        if size is None or parse_quantity(size) == wanted:
            continue
        if parse_quantity(size) > wanted:
            state.warn_once(body, "VolumeShrinkRefused",
                            f"spec.storage.size {store.storage_size} is smaller than volume {name} ({size}); "
                            f"volumes cannot shrink")
            continue
        try:
            await kube.patch("PersistentVolumeClaim", store.namespace, name,
                             {"spec": {"resources": {"requests": {"storage": store.storage_size}}}})
        except ApiException as exc:
            state.warn_once(body, "VolumeExpansionFailed",
                            f"could not grow volume {name} from {size} to {store.storage_size} (HTTP "
                            f"{exc.status}: does its storage class allow volume expansion?)")
            continue
        kopf.info(body, reason="VolumeExpanding", message=f"Growing volume {name} from {size} to {store.storage_size}")
        grown.append(name)
    return grown


def revert_outside_scale(store: StoreSpec, sts: Mapping[str, Any] | None, body: Any) -> None:
    """`kubectl scale sts` bypasses the scale-down guard: the next pass puts the size back; say so."""
    replicas = ((sts or {}).get("spec") or {}).get("replicas")
    if replicas is None or replicas == store.replicas:
        return
    below = (f", below the {store.required_in_sync} in-sync replicas writes need"
             if replicas < store.required_in_sync else "")
    kopf.warn(body, reason="StatefulSetScaleReverted",
              message=f"StatefulSet {sts['metadata']['name']} was scaled to {replicas} outside the EventStore"
                      f"{below}; reverting to {store.replicas} (scale the EventStore instead: "
                      f"kubectl scale evs/{store.name} --replicas=N)")


async def observe_cluster(state: OperatorState, store: StoreSpec, replicas: int) -> status.ClusterView:
    deps = state.deps
    urls = {pod: deps.cluster_url(store.name, store.namespace, pod)
            for pod in (manifests.pod_name(store.name, i) for i in range(replicas))}
    views = await status.fetch_cluster_views(urls, deps.fetch_json, await admin_token(state, store))
    if missing := len(urls) - len(views):
        deps.metrics.status_probe_failures.inc(missing)
    return status.merge_cluster_views(views)


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or ())


async def roll_one_pod(state: OperatorState, store: StoreSpec, sts: Mapping[str, Any],
                       cluster: status.ClusterView, body: Any) -> str | None:
    """One step of a rolling restart (the StatefulSet uses OnDelete): restart one outdated pod, if safe.

    Followers go first, one at a time, each only when every pod is ready and back in the in-sync set;
    the leader goes last, after it handed leadership over with a step-down.
    """
    revision = (sts.get("status") or {}).get("updateRevision")
    if not revision:
        return None
    kube = state.client()
    pods = await kube.list("Pod", store.namespace, manifests.selector_labels(store.name))
    outdated = sorted((p for p in pods if (p["metadata"].get("labels") or {}).get(REVISION_LABEL) != revision
                       and not p["metadata"].get("deletionTimestamp")), key=lambda p: p["metadata"]["name"])
    if not outdated:
        return None
    settled = (len(pods) >= store.replicas and all(_pod_ready(p) for p in pods)
               and not any(p["metadata"].get("deletionTimestamp") for p in pods))
    if not settled:
        return None
    if store.replicas > 1 and (cluster.leader is None or len(cluster.isr) < store.replicas):
        return None  # a restarted follower has not caught up yet
    followers = [p for p in outdated if p["metadata"]["name"] != cluster.leader]
    if followers:
        victim = followers[-1]["metadata"]["name"]
        await kube.delete("Pod", store.namespace, victim)
        kopf.info(body, reason="RestartingFollower", message=f"Restarting follower {victim} for revision {revision}")
        return victim
    leader = outdated[0]["metadata"]["name"]
    if store.replicas > 1:
        code = await state.deps.post(state.deps.step_down_url(store.name, store.namespace, leader),
                                     await admin_token(state, store))
        if code >= 300:
            kopf.warn(body, reason="SwitchoverBlocked",
                      message=f"leader {leader} refused to step down (HTTP {code}); retrying later")
            return None
        kopf.info(body, reason="SwitchedOver", message=f"Leader {leader} stepped down before its restart")
    await kube.delete("Pod", store.namespace, leader)
    kopf.info(body, reason="RestartingLeader", message=f"Restarting former leader {leader} for revision {revision}")
    return leader


def connection_info(configuration: Configuration) -> kopf.ConnectionInfo:
    token = None
    for value in (configuration.api_key or {}).values():
        if isinstance(value, str) and value.startswith("Bearer "):
            token = value.removeprefix("Bearer ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        token=token,
        username=configuration.username or None,
        password=configuration.password or None,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
    )


# ---- the registry ----------------------------------------------------------------------------------

def build_registry(deps: OperatorDeps | None = None) -> kopf.OperatorRegistry:
    state = OperatorState(deps or OperatorDeps())
    deps = state.deps
    registry = kopf.OperatorRegistry()
    resource = dict(group=GROUP, version=VERSION, plural=PLURAL)

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf and our own client authenticate from one source (service account or kubeconfig).
        return connection_info(await deps.kube_configuration())

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        # Namespaced RBAC: no listing of namespaces or CRDs; serve the configured namespace only.
        settings.scanning.disabled = True
        settings.persistence.finalizer = FINALIZER
        # Keep kopf's bookkeeping in annotations: the CRD's status schema is ours alone.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="evstore.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="evstore.io")
        settings.posting.level = logging.INFO
        state.kube = Kube(await deps.kube_configuration())

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        if state.kube is not None:
            await state.kube.close()
            state.kube = None

    @kopf.on.resume(**resource, registry=registry)
    @kopf.on.create(**resource, registry=registry)
    @kopf.on.update(**resource, registry=registry)
    async def reconcile(name: str, namespace: str, uid: str, body: Any, spec: Any, meta: Any, patch: Any,
                        reason: str = "", **_: Any) -> None:
        with measured(deps.metrics, "reconcile"):
            key = (namespace, name)
            try:
                store = parse_spec(name, namespace, dict(spec))
            except SpecError as exc:
                _fail(state, key, body, patch, meta, str(exc))
                raise kopf.PermanentError(str(exc)) from exc
            store = await with_running_store_id(state, store, uid, body)

            # The guard compares with what runs (the StatefulSet), not with the previous spec: a
            # refused request is reverted and must not count as the new baseline.
            running = await state.client().get("StatefulSet", namespace, manifests.statefulset_name(name))
            running_replicas = int(((running or {}).get("spec") or {}).get("replicas") or 0)
            if running_replicas and store.replicas < running_replicas:
                cluster = await observe_cluster(state, store, running_replicas)
                refusal = status.scale_down_refusal(name, running_replicas, store.replicas, store.min_in_sync,
                                                    cluster)
                if refusal:
                    deps.metrics.scale_down_refusals.inc()
                    kopf.warn(body, reason="ScaleDownRefused", message=refusal)
                    patch.spec["replicas"] = running_replicas  # CloudNativePG-style: revert the request
                    return
                kopf.info(body, reason="ScalingDown",
                          message=f"Scaling down from {running_replicas} to {store.replicas} replicas")
            elif running_replicas and store.replicas > running_replicas:
                kopf.info(body, reason="ScalingUp",
                          message=f"Scaling up from {running_replicas} to {store.replicas} replicas")

            try:
                await ensure_children(state, store, uid, body)
            except SpecError as exc:
                _fail(state, key, body, patch, meta, str(exc))
                # A missing referenced Secret is usually created soon after the store: retry often.
                raise kopf.TemporaryError(str(exc), delay=10) from exc
            state.failures.pop(key, None)
            _clear_regenerate(meta, patch)
            state.track(namespace, name, state.phases.get(key) or status.PENDING)
            patch.status["observedGeneration"] = meta.get("generation")
            patch.status["selector"] = manifests.label_selector(manifests.selector_labels(name))
            if not (body.get("status") or {}).get("phase") or reason == "create":
                patch.status["phase"] = status.PENDING
            if store.dashboards and not deps.dashboards():
                state.warn_once(body, "DashboardsUnavailable",
                                "monitoring.dashboards is set but the operator has no dashboards to ship")

    @kopf.on.delete(**resource, registry=registry)
    async def delete(name: str, namespace: str, body: Any, spec: Any, **_: Any) -> None:
        with measured(deps.metrics, "delete"):
            state.track(namespace, name, None)
            kube = state.client()
            delete_volumes = bool(((spec or {}).get("storage") or {}).get("deleteOnResourceDeletion", False))
            selector = {"app.kubernetes.io/instance": name, "app.kubernetes.io/name": "evstore"}
            claims = await kube.list("PersistentVolumeClaim", namespace, selector)
            if not delete_volumes:
                kopf.info(body, reason="VolumesKept",
                          message=f"Keeping {len(claims)} PersistentVolumeClaims; delete them with "
                                  f"kubectl delete pvc -l app.kubernetes.io/instance={name}")
                return
            for claim in claims:
                await kube.delete("PersistentVolumeClaim", namespace, claim["metadata"]["name"])
            kopf.info(body, reason="VolumesDeleted",
                      message=f"Deleted {len(claims)} PersistentVolumeClaims (storage.deleteOnResourceDeletion)")

    @kopf.timer(**resource, interval=deps.status_interval, registry=registry)
    async def refresh(name: str, namespace: str, uid: str, body: Any, spec: Any, meta: Any, patch: Any,
                      **_: Any) -> None:
        with measured(deps.metrics, "status"):
            key = (namespace, name)
            try:
                store = parse_spec(name, namespace, dict(spec))
            except SpecError:
                return  # reported by reconcile; nothing to observe
            store = await with_running_store_id(state, store, uid, body)
            old_status = dict(body.get("status") or {})
            kube = state.client()
            generation = int(meta.get("generation") or 0)
            if old_status.get("observedGeneration") == generation and key not in state.failures:
                # Repair drift (a deleted Service, an edited StatefulSet) only for a spec reconcile
                # already accepted: a new spec must pass the scale-down guard in reconcile first.
                try:
                    await ensure_children(state, store, uid, body, repair=True)
                    _clear_regenerate(meta, patch)
                except SpecError as exc:
                    state.failures[key] = str(exc)
                    state.warn_once(body, "InvalidSpec", str(exc))
                await expand_volumes(state, store, body)
            sts = await kube.get("StatefulSet", namespace, manifests.statefulset_name(name))
            seen = max(store.replicas, int(((sts or {}).get("status") or {}).get("replicas") or 0))
            cluster = await observe_cluster(state, store, seen)
            if sts is not None:
                await roll_one_pod(state, store, sts, cluster, body)
            observation = status.Observation(generation=generation, replicas=store.replicas,
                                             required_in_sync=store.required_in_sync, sts=sts, cluster=cluster,
                                             failure=state.failures.get(key), problem=state.problems.get(key))
            new_status = status.status_patch(observation, old_status,
                                             deps.now(), manifests.label_selector(manifests.selector_labels(name)))
            _announce_changes(body, old_status, new_status)
            state.track(namespace, name, new_status["phase"])
            if any(old_status.get(k) != v for k, v in new_status.items()):
                patch.status.update(new_status)

    return registry


def _clear_regenerate(meta: Any, patch: Any) -> None:
    """The regenerate annotation is a one-shot request: removed once the Secrets were made again."""
    if ((meta.get("annotations") or {}).get(REGENERATE_ANNOTATION)) is not None:
        patch.metadata.setdefault("annotations", {})[REGENERATE_ANNOTATION] = None


def _fail(state: OperatorState, key: tuple[str, str], body: Any, patch: Any, meta: Any, message: str) -> None:
    state.failures[key] = message
    state.track(key[0], key[1], status.FAILED)
    kopf.warn(body, reason="InvalidSpec", message=message)
    patch.status["phase"] = status.FAILED
    patch.status["message"] = message
    patch.status["observedGeneration"] = meta.get("generation")


def _announce_changes(body: Any, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    if old.get("phase") != new["phase"]:
        report = kopf.info if new["phase"] in (status.READY, status.PROGRESSING, status.PENDING) else kopf.warn
        report(body, reason=f"Phase{new['phase']}", message=new["message"])
    if new["leader"] and old.get("leader") != new["leader"]:
        kopf.info(body, reason="LeaderElected", message=f"Leader is {new['leader']} (epoch {new['epoch']})")
