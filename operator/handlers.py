"""kopf handlers for EventStore resources, at module level; what they share lives in kopf's memo.

Run them with `kopf.operator(registry=build_registry(interval), memo=operator_memo(deps))`: `deps`
carries what tests replace (how to reach the API server, how to talk to a node); the startup handler
puts the OperatorState into the memo, which kopf hands (as a shallow copy) to every handler.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping

import kopf
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.client.exceptions import ApiException

from evstore.operator import manifests, status
from evstore.operator.context import OperatorDeps, OperatorState, measured
from evstore.operator.kube import Kube
from evstore.operator.reconcile import (REGENERATE_ANNOTATION, bootstrap_etcd_auth, ensure_children,
                                        ensure_min_in_sync, expand_volumes, hand_over_before_scale_down,
                                        observe_cluster, roll_one_pod,
                                        with_running_clustering, with_running_etcd_auth, with_running_store_id)
from evstore.operator.spec import GROUP, PLURAL, VERSION, SpecError, parse_spec

FINALIZER = "evstore.io/finalizer"
RESOURCE = dict(group=GROUP, version=VERSION, plural=PLURAL)


def operator_memo(deps: OperatorDeps | None = None) -> kopf.Memo:
    return kopf.Memo(deps=deps or OperatorDeps())


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


# ---- handlers --------------------------------------------------------------------------------------

async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    # kopf and our own client authenticate from one source (service account or kubeconfig).
    return connection_info(await memo.deps.kube_configuration())


TIMER_EXIT_POLLING = 1.0  # seconds


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True
    # Namespaced RBAC: no listing of namespaces or CRDs; serve the configured namespace only.
    settings.scanning.disabled = True
    settings.persistence.finalizer = FINALIZER
    # Keep kopf's bookkeeping in annotations: the CRD's status schema is ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="evstore.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="evstore.io")
    settings.posting.level = logging.INFO
    # kopf keeps a deleted store's finalizer until the status timer's pass in flight has ended, and looks again
    # only this long after (its default, 60 s, kept a store deleted during a pass that patched nothing a minute)
    settings.background.cancellation_polling = TIMER_EXIT_POLLING
    memo.state = OperatorState(memo.deps, kube=Kube(await memo.deps.kube_configuration()))


async def close(memo: kopf.Memo, **_: Any) -> None:
    state: OperatorState | None = memo.get("state")
    if state is not None and state.kube is not None:
        await state.kube.close()
        state.kube = None


async def reconcile(name: str, namespace: str, uid: str, body: Any, spec: Any, meta: Any, patch: Any,
                    memo: kopf.Memo, reason: str = "", **_: Any) -> None:
    state: OperatorState = memo.state
    deps = state.deps
    with measured(deps.metrics, "reconcile"):
        key = (namespace, name)
        try:
            store = parse_spec(name, namespace, dict(spec))
        except SpecError as exc:
            _fail(state, key, body, patch, meta, str(exc))
            raise kopf.PermanentError(str(exc)) from exc
        store = await with_running_store_id(state, store, uid, body)
        store = await with_running_clustering(state, store, uid, body)
        store = await with_running_etcd_auth(state, store, body)

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
            if handed := await hand_over_before_scale_down(state, store, cluster, running_replicas, body):
                # the next try sees the new leader (which may be leaving too, then it steps down in turn)
                raise kopf.TemporaryError("the scale-down waits for the leader to be one of the pods that stay",
                                          delay=SCALE_DOWN_RETRY if handed == "stepped-down" else REJECTED_RETRY)
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
        except ApiException as exc:
            if not rejected(exc):
                raise
            # the pods run on as they were (children applied before this one carry the new spec); the status says
            # why the spec is not applied (refresh)
            message = f"the API server refused to apply generation {meta.get('generation')}: {api_refusal(exc)}"
            state.rejections[key] = message
            kopf.warn(body, reason="ApplyRejected", message=message)
            raise kopf.TemporaryError(message, delay=REJECTED_RETRY) from exc
        state.rejections.pop(key, None)
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

async def delete(name: str, namespace: str, body: Any, spec: Any, memo: kopf.Memo, **_: Any) -> None:
    state: OperatorState = memo.state
    with measured(state.deps.metrics, "delete"):
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

async def refresh(name: str, namespace: str, uid: str, body: Any, spec: Any, meta: Any, patch: Any,
                  memo: kopf.Memo, **_: Any) -> None:
    state: OperatorState = memo.state
    deps = state.deps
    with measured(deps.metrics, "status"):
        key = (namespace, name)
        try:
            store = parse_spec(name, namespace, dict(spec))
        except SpecError:
            return  # reported by reconcile; nothing to observe
        store = await with_running_store_id(state, store, uid, body)
        store = await with_running_clustering(state, store, uid, body)
        store = await with_running_etcd_auth(state, store, body)
        stored_status = dict(body.get("status") or {})
        old_status, read_version = state.status_seen(key, body)
        kube = state.client()
        generation = int(meta.get("generation") or 0)
        accepted = old_status.get("observedGeneration") == generation and key not in state.failures
        if accepted:
            # Repair drift (a deleted Service, an edited StatefulSet) only for a spec reconcile
            # already accepted: a new spec must pass the scale-down guard in reconcile first.
            try:
                await ensure_children(state, store, uid, body, repair=True)
                _clear_regenerate(meta, patch)
            except SpecError as exc:
                state.failures[key] = str(exc)
                state.warn_once(body, "InvalidSpec", str(exc))
            await expand_volumes(state, store, body)
            await bootstrap_etcd_auth(state, store, body)
        sts = await kube.get("StatefulSet", namespace, manifests.statefulset_name(name))
        seen = max(store.replicas, int(((sts or {}).get("status") or {}).get("replicas") or 0))
        cluster = await observe_cluster(state, store, seen)
        min_in_sync = None
        if accepted:
            min_in_sync = await ensure_min_in_sync(state, store, manifests.owner_reference(name, uid), body,
                                                   sts=sts, cluster=cluster)
        if sts is not None:
            await roll_one_pod(state, store, sts, cluster, body)
        # conditions say which generation they describe: the newest only once it was applied
        described = generation if accepted or key in state.failures else int(old_status.get("observedGeneration") or 0)
        observation = status.Observation(generation=described, replicas=store.replicas,
                                         required_in_sync=store.required_in_sync, sts=sts, cluster=cluster,
                                         failure=state.failures.get(key),
                                         problem=state.rejections.get(key) or state.problems.get(key),
                                         min_in_sync=min_in_sync, scaling=state.scaling.get(key))
        new_status = status.status_patch(observation, old_status,
                                         deps.now(), manifests.label_selector(manifests.selector_labels(name)))
        _announce_changes(body, old_status, new_status)
        state.track(namespace, name, new_status["phase"])
        # against the object itself: a patch that did not apply is sent again
        if any(stored_status.get(k) != v for k, v in new_status.items()):
            patch.status.update(new_status)
            state.status_written[key] = (read_version, new_status)


# ---- the registry ----------------------------------------------------------------------------------

def build_registry(status_interval: float = 10.0) -> kopf.OperatorRegistry:
    """Every handler, registered; only the timer's interval varies (the nodes are asked that often)."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.cleanup(registry=registry)(close)
    for on in (kopf.on.resume, kopf.on.create, kopf.on.update):
        on(**RESOURCE, registry=registry)(reconcile)
    kopf.on.delete(**RESOURCE, registry=registry)(delete)
    kopf.timer(**RESOURCE, interval=status_interval, registry=registry)(refresh)
    return registry


SCALE_DOWN_RETRY = 2  # seconds: after the leader of a leaving pod stepped down (or refused to)
REJECTED_RETRY = 10  # seconds: a refused change is tried again (the cause may be outside the spec: RBAC, a quota)


# 4xx answers that pass by themselves: a missing kind (404), a race (409), an expired watch (410), a timeout (408),
# throttling (429), a token being rotated (401)
PASSING_REFUSALS = frozenset({401, 404, 408, 409, 410, 429})


def rejected(exc: ApiException) -> bool:
    """A refusal a person must act on (invalid, forbidden, over a quota), not one that passes by itself."""
    return 400 <= (exc.status or 0) < 500 and exc.status not in PASSING_REFUSALS


def api_refusal(exc: ApiException) -> str:
    """The API server's reason for refusing, on one line and bounded (a Status object's message)."""
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    text = " ".join(str(message or f"HTTP {exc.status}").split())
    return text if len(text) <= 400 else text[:399] + "…"


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
