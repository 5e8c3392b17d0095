"""The steps of a reconciliation: children applied (never taken over from another owner), generated
Secrets, volumes grown, the nodes observed, one pod of a rolling restart. The kopf handlers
(handlers.py) call these; each takes the OperatorState it acts for."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from evstore.operator import manifests, scaling, status
from evstore.operator.context import OperatorState
from evstore.operator.etcdauth import EtcdAuthError, ensure_etcd_auth
from evstore.operator.kube import Kube, secret_values
from evstore.operator.quantity import parse_quantity
from evstore.operator.spec import ETCD_MEMBERS, TOKEN_ROLES, TOKENS_FILE_KEY, SpecError, StoreSpec

REVISION_LABEL = "controller-revision-hash"
# Set to "true" on an EventStore to generate new Secrets after a generated one was deleted.
REGENERATE_ANNOTATION = "evstore.io/regenerate-secrets"
Manifest = dict[str, Any]


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
            await kube.create(manifests.stamped(desired))
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
    if actual is None:  # read back: a concurrent pass (reconcile and timer) may have created it first
        actual = await kube.get("Secret", meta["namespace"], meta["name"])
    return secret_values(actual) or dict(desired["stringData"])


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
        if problem := manifests.tokens_file_problem(tokens[TOKENS_FILE_KEY], admin=tokens["admin"]):
            raise SpecError(f"spec.auth.tokensSecretRef: Secret {store.tokens_secret}: {problem}")
    else:
        generated = {role: state.deps.new_token(role) for role in TOKEN_ROLES}
        tokens = await ensure_generated_secret(
            state, manifests.owned(manifests.api_tokens_secret(store, generated), owner), body,
            in_use=in_use, regenerate=regenerate)
    etcd_password = ""
    if store.etcd_auth:
        new = state.deps.new_secret
        etcd_running = await kube.get("StatefulSet", store.namespace, manifests.etcd_name(store.name))
        etcd = await ensure_generated_secret(
            state, manifests.owned(manifests.etcd_auth_secret(store, root_password=new(), node_password=new(),
                                                              jwt_key=new()), owner), body,
            in_use=etcd_running is not None, regenerate=regenerate)
        etcd_password = etcd.get(manifests.ETCD_NODE_KEY, "")
    # The pods read only the cluster secret's key, the tokens file and their etcd password.
    return manifests.secrets_digest({ref.key: cluster.get(ref.key, "")},
                                    {TOKENS_FILE_KEY: tokens.get(TOKENS_FILE_KEY, "")},
                                    *([{manifests.ETCD_NODE_KEY: etcd_password}] if store.etcd_auth else []))


async def bootstrap_etcd_auth(state: OperatorState, store: StoreSpec, body: Any) -> bool:
    """Once the managed etcd has a quorum of ready members, make it enforce users (etcdauth.py); once
    per store and operator run. True when etcd enforces users afterwards."""
    key = (store.namespace, store.name)
    if not store.etcd_auth or key in state.etcd_auth_done:
        return key in state.etcd_auth_done
    kube = state.client()
    etcd = await kube.get("StatefulSet", store.namespace, manifests.etcd_name(store.name))
    if int(((etcd or {}).get("status") or {}).get("readyReplicas") or 0) < ETCD_MEMBERS // 2 + 1:
        return False
    values = secret_values(await kube.get("Secret", store.namespace, manifests.etcd_auth_secret_name(store.name)))
    if not values.get(manifests.ETCD_ROOT_KEY):
        return False
    try:
        enabled_now = await ensure_etcd_auth(
            state.deps.etcd_urls(store.name, store.namespace), root_password=values[manifests.ETCD_ROOT_KEY],
            user=manifests.etcd_username(store), password=values[manifests.ETCD_NODE_KEY],
            prefix=manifests.etcd_key_prefix(store))
    except EtcdAuthError as exc:
        state.warn_once(body, "EtcdAuthPending", f"the managed etcd does not enforce users yet: {exc}")
        return False
    state.etcd_auth_done.add(key)
    if enabled_now:
        kopf.info(body, reason="EtcdAuthEnabled",
                  message=f"The managed etcd enforces users; the nodes' user {manifests.etcd_username(store)} "
                          f"may use only {manifests.etcd_key_prefix(store)}")
    return True


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


async def with_running_clustering(state: OperatorState, store: StoreSpec, uid: str, body: Any) -> StoreSpec:
    """A clustered store stays clustered, on its etcd: restarting its pods as single nodes would let
    each accept writes on its own copy of the log, and pods restarted onto another etcd (one without
    a single endpoint in common) would elect a second leader there while the others still run."""
    config = await state.client().get("ConfigMap", store.namespace, manifests.configmap_name(store.name))
    owners = ((config or {}).get("metadata") or {}).get("ownerReferences") or ()
    running = ((config or {}).get("data") or {}).get("EVSTORE_ETCD_ENDPOINTS")
    if not running or not any(r.get("uid") == uid for r in owners):
        return store
    endpoints = tuple(running.split(","))
    if store.etcd_enabled:
        if set(manifests.etcd_endpoints(store)) & set(endpoints):
            return store
        state.warn_once(body, "EtcdChangeRefused",
                        "spec.etcd names another etcd than the one the store runs on; the store keeps its "
                        "etcd (its pods would elect a second leader on the other one during the roll)")
    else:
        state.warn_once(body, "ClusteringKept",
                        "spec.etcd turns clustering off, but the store runs clustered and stays so (its pods "
                        "would each accept writes alone); it keeps its etcd")
    if list(endpoints) == manifests.managed_etcd_endpoints(store.name, store.namespace):
        # etcd_auth as a new managed store has it; with_running_etcd_auth turns it off for an old etcd
        return dataclasses.replace(store, etcd_managed=True, etcd_auth=True, etcd_endpoints=())
    return dataclasses.replace(store, etcd_endpoints=endpoints, etcd_managed=False, etcd_auth=False)


async def with_running_etcd_auth(state: OperatorState, store: StoreSpec, body: Any) -> StoreSpec:
    """A managed etcd created before etcd auth keeps running without it: turning it on under running
    nodes that have no etcd user would cut them off (migrate by recreating the store)."""
    if not store.etcd_auth:
        return store
    etcd = await state.client().get("StatefulSet", store.namespace, manifests.etcd_name(store.name))
    if etcd is None:
        return store
    containers = ((((etcd.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")) or [{}]
    if any(str(a).startswith("--auth-token=") for a in containers[0].get("args") or ()):
        return store
    state.warn_once(body, "EtcdUnauthenticated",
                    "the managed etcd was created without authentication and keeps running so; any pod that "
                    "reaches it may rewrite the store's leadership keys")
    return dataclasses.replace(store, etcd_auth=False)


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
    replicas = store.replicas
    if digest is not None:
        template = manifests.owned(manifests.statefulset(store, secrets=digest), owner)["spec"]["template"]
        replicas = scaling.statefulset_replicas(store.replicas, sts, template, manifests.is_subset)
    if replicas < store.replicas:
        state.scaling[key] = (f"scaling up to {store.replicas} replicas once the {replicas} running pods run the "
                              f"current pod template and are ready")
        state.warn_once(body, "ScaleUpWaiting", state.scaling[key] + " (a pod from before clustering restarts "
                        "into the cluster first, so that new pods join its log instead of starting another)")
    else:
        state.scaling.pop(key, None)
    changed = []
    await ensure_min_in_sync(state, store, owner, body, sts=sts)
    alert_rules = state.deps.alert_rules() if store.service_monitor else {}
    for child in manifests.desired_children(store, dashboards=dashboards, alert_rules=alert_rules,
                                            secrets=digest or "", replicas=replicas):
        if digest is None and child["kind"] == "StatefulSet" and child["metadata"]["name"] == store.name:
            continue  # keep the running pods as they are until the Secret is back
        is_nodes = child["kind"] == "StatefulSet" and child["metadata"]["name"] == store.name
        seen = ((lambda actual: revert_outside_scale(dataclasses.replace(store, replicas=replicas), actual, body))
                if repair and is_nodes else None)
        try:
            if await apply(kube, manifests.owned(child, owner), body, seen):
                changed.append(f"{child['kind']}/{child['metadata']['name']}")
        except ApiException as exc:
            if child["kind"] in ("ServiceMonitor", "PrometheusRule") and exc.status == 404:
                state.warn_once(body, f"{child['kind']}Unavailable",
                                f"monitoring.serviceMonitor is set but the {child['kind']} CRD "
                                "(Prometheus Operator) is not installed")
                continue
            raise
    return changed


async def ensure_min_in_sync(state: OperatorState, store: StoreSpec, owner: Mapping[str, Any], body: Any, *,
                             sts: Mapping[str, Any] | None = None,
                             cluster: status.ClusterView | None = None) -> int | None:
    """Write the minInSync the clustered nodes enforce (their mounted in-sync ConfigMap): a new store's
    from the start, lowered at once, raised only once `cluster` has enough in-sync replicas. The value
    written, None for a single node."""
    if not store.etcd_enabled:
        return None
    kube = state.client()
    name = manifests.in_sync_configmap_name(store.name)
    text = str(((await kube.get("ConfigMap", store.namespace, name) or {}).get("data") or {})
               .get(manifests.MIN_IN_SYNC_KEY, ""))
    required = store.required_in_sync
    if not text.isdigit():
        running = int(((sts or {}).get("spec") or {}).get("replicas") or 0) if sts is not None else None
        value = scaling.initial_min_in_sync(required, running)
    else:
        in_sync = len(cluster.isr) if cluster is not None and cluster.leader is not None else None
        value = scaling.next_min_in_sync(required, int(text), in_sync)
    if text.isdigit() and value != int(text):
        kopf.info(body, reason="MinInSyncChanged", message=f"minInSync {text} -> {value}")
    await apply(kube, manifests.owned(manifests.in_sync_configmap(store, value), owner), body)
    return value


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


async def hand_over_before_scale_down(state: OperatorState, store: StoreSpec, cluster: status.ClusterView,
                                      running: int, body: Any) -> str | None:
    """Before a scale-down removes the leader's pod (a StatefulSet removes the highest ordinals), ask it to step
    down, as before its restart in a roll (CloudNativePG never removes its primary either). What was done:
    "stepped-down" or "blocked" (the scale-down waits for the next try), None when the leader stays."""
    leaving = {manifests.pod_name(store.name, i) for i in range(store.replicas, running)}
    if cluster.leader is None or cluster.leader not in leaving:
        return None
    code = await state.deps.post(state.deps.step_down_url(store.name, store.namespace, cluster.leader),
                                 await admin_token(state, store))
    if code >= 300:
        kopf.warn(body, reason="SwitchoverBlocked",
                  message=f"leader {cluster.leader} is among the pods the scale-down removes and refused to step "
                          f"down (HTTP {code}); the scale-down waits and tries again")
        return "blocked"
    kopf.info(body, reason="SwitchedOver", message=f"Leader {cluster.leader} stepped down: the scale-down removes it")
    return "stepped-down"


# Why a container that never started waits: its image, or its configuration, is wrong. (Not CrashLoopBackOff:
# a node that ran and crashed once shows it for its back-off, and the kubelet restarts it.)
NEVER_STARTED_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                   "CreateContainerConfigError", "CreateContainerError"})


def cannot_run(pod: Mapping[str, Any]) -> bool:
    """True for a pod that serves nothing and never did: no node can take it, or the node's container (or an init
    container before it) cannot be created, and the node's container has never started."""
    pod_status = pod.get("status") or {}
    if any(c.get("type") == "PodScheduled" and c.get("status") == "False" for c in pod_status.get("conditions") or ()):
        return True
    node = [c for c in pod_status.get("containerStatuses") or () if c.get("name") == manifests.NODE_CONTAINER]
    if any(c.get("restartCount") or (c.get("state") or {}).get("running") or c.get("lastState") for c in node):
        return False
    return any(((c.get("state") or {}).get("waiting") or {}).get("reason") in NEVER_STARTED_REASONS
               for c in [*(pod_status.get("initContainerStatuses") or ()), *node])


async def roll_one_pod(state: OperatorState, store: StoreSpec, sts: Mapping[str, Any],
                       cluster: status.ClusterView, body: Any) -> str | None:
    """One step of a rolling restart (the StatefulSet uses OnDelete): restart one outdated pod, if safe.

    An outdated pod that cannot run (its image cannot be pulled, it cannot be scheduled) goes first, whatever
    the others' state: with OnDelete nothing else would replace it once the template is fixed. Then followers,
    one at a time, each only when every pod is ready and back in the in-sync set; the leader goes last,
    after it handed leadership over with a step-down.
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
    if stuck := [p for p in outdated if cannot_run(p)]:
        # a pod on a template since fixed (a bad image tag, a node selector nothing matches) serves
        # nothing and waits for ever: restarting it onto the current template cannot lower availability
        victim = stuck[-1]["metadata"]["name"]
        await kube.delete("Pod", store.namespace, victim)
        kopf.info(body, reason="RestartingStuckPod",
                  message=f"Restarting {victim}, which cannot run its outdated template, for revision {revision}")
        return victim
    settled = (all(_pod_ready(p) for p in pods)
               and not any(p["metadata"].get("deletionTimestamp") for p in pods))
    if not settled:
        return None
    if store.etcd_managed:  # a pod restarted without its etcd would only wait for it, unready
        etcd = await kube.get("StatefulSet", store.namespace, manifests.etcd_name(store.name))
        if int(((etcd or {}).get("status") or {}).get("readyReplicas") or 0) < ETCD_MEMBERS // 2 + 1:
            return None
    size = int((sts.get("spec") or {}).get("replicas") or 0)  # what runs; a scale-up waits for this roll
    if len(pods) < size:
        return None
    if size > 1 and (cluster.leader is None or len(cluster.isr) < size):
        return None  # a restarted follower has not caught up yet
    followers = [p for p in outdated if p["metadata"]["name"] != cluster.leader]
    if followers:
        victim = followers[-1]["metadata"]["name"]
        await kube.delete("Pod", store.namespace, victim)
        kopf.info(body, reason="RestartingFollower", message=f"Restarting follower {victim} for revision {revision}")
        return victim
    leader = outdated[0]["metadata"]["name"]
    if size > 1:
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
