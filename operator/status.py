"""Observing a store: ask the nodes' /v1/cluster, then turn what was seen into phase and conditions.

Everything but `fetch_cluster_views` (network) is a pure function of its arguments.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

import aiohttp

from evstore.operator import manifests
from evstore.operator.spec import NODE_PORT, majority

# Phases, from the least to the most healthy (see README.md, "Run on Kubernetes").
PENDING = "Pending"          # children created, no pod ready yet
PROGRESSING = "Progressing"  # a scale or a rolling upgrade is under way
READY = "Ready"              # every replica ready, a leader, the in-sync set complete
DEGRADED = "Degraded"        # accepts writes, but with less redundancy than asked
UNAVAILABLE = "Unavailable"  # pods run but there is no leader or too few in-sync replicas: writes fail
FAILED = "Failed"            # the operator cannot build the store from this spec (see the message)
PHASES = (PENDING, PROGRESSING, READY, DEGRADED, UNAVAILABLE, FAILED)

CONDITION_TYPES = ("Ready", "Progressing", "Degraded")

# (url, admin token) -> parsed JSON body of GET <url>; raises on any failure.
FetchJson = Callable[[str, str | None], Awaitable[Mapping[str, Any]]]
# (url, admin token) -> HTTP status of POST <url>.
PostEmpty = Callable[[str, str | None], Awaitable[int]]


def node_base_url(store: str, namespace: str, pod: str) -> str:
    """Where the operator reaches one pod: its stable DNS name under the headless Service."""
    return f"http://{manifests.pod_fqdn(store, namespace, pod)}:{NODE_PORT}"


def cluster_url(store: str, namespace: str, pod: str) -> str:
    return f"{node_base_url(store, namespace, pod)}/v1/cluster"


def step_down_url(store: str, namespace: str, pod: str) -> str:
    return f"{node_base_url(store, namespace, pod)}/v1/cluster/step-down"


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def http_get_json(url: str, token: str | None, timeout: float = 3.0) -> Mapping[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(url, headers=_auth_headers(token)) as response:
            response.raise_for_status()
            return await response.json()


async def http_post(url: str, token: str | None, timeout: float = 10.0) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(url, json={}, headers=_auth_headers(token)) as response:
            return response.status


async def fetch_cluster_views(urls: Mapping[str, str], fetch: FetchJson,
                              token: str | None) -> dict[str, Mapping[str, Any]]:
    """Ask every pod at once (with the store's admin token); the pods that do not answer are left out."""
    async def one(pod: str, url: str) -> tuple[str, Mapping[str, Any] | None]:
        try:
            return pod, await fetch(url, token)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            return pod, None
    results = await asyncio.gather(*(one(pod, url) for pod, url in urls.items()))
    return {pod: view for pod, view in results if view is not None}


@dataclass(frozen=True)
class ClusterView:
    """What the nodes say, merged: the view of the highest epoch wins (a deposed leader's is stale)."""
    leader: str | None = None
    leader_url: str | None = None
    epoch: int | None = None
    committed_position: int | None = None
    isr: tuple[str, ...] = ()
    min_in_sync: int | None = None
    answered: tuple[str, ...] = ()


def merge_cluster_views(views: Mapping[str, Mapping[str, Any]]) -> ClusterView:
    if not views:
        return ClusterView()
    best = max(views.values(), key=lambda v: (v.get("epoch") or 0, v.get("role") == "leader",
                                              v.get("committedPosition") or 0))
    leader = best.get("leader") or {}
    if not leader and best.get("role") in ("single", "leader"):
        leader = {"node": best.get("node"), "url": None}
    isr = tuple(best.get("isr") or ((best.get("node"),) if best.get("role") == "single" else ()))
    return ClusterView(
        leader=leader.get("node"), leader_url=leader.get("url"), epoch=best.get("epoch"),
        committed_position=best.get("committedPosition"), isr=tuple(n for n in isr if n),
        min_in_sync=best.get("minInSync"), answered=tuple(sorted(views)),
    )


@dataclass(frozen=True)
class Observation:
    """Everything the status is computed from."""
    generation: int
    replicas: int
    required_in_sync: int
    sts: Mapping[str, Any] | None
    cluster: ClusterView = field(default_factory=ClusterView)
    failure: str | None = None
    problem: str | None = None  # serves as it is, but needs a person (e.g. a deleted Secret)
    min_in_sync: int | None = None  # what the operator has the nodes enforce now (below required: rising)
    scaling: str | None = None  # a scale-up waiting for a roll-out, and why


@dataclass(frozen=True)
class ConditionState:
    type: str
    status: bool
    reason: str
    message: str


def rollout_pending(sts: Mapping[str, Any] | None) -> bool:
    if not sts:
        return True
    status = sts.get("status") or {}
    spec_replicas = (sts.get("spec") or {}).get("replicas", 0)
    if status.get("observedGeneration", 0) < (sts.get("metadata") or {}).get("generation", 0):
        return True
    if status.get("replicas", 0) != spec_replicas:
        return True
    # Not currentRevision: with the OnDelete strategy the controller never advances it
    # (kubernetes/kubernetes#73492); updatedReplicas counts the pods on the update revision.
    return status.get("updatedReplicas", spec_replicas) < spec_replicas


def compute(obs: Observation) -> tuple[str, list[ConditionState], str]:
    """(phase, conditions, message) of an observation."""
    ready_replicas = int(((obs.sts or {}).get("status") or {}).get("readyReplicas") or 0)
    cluster = obs.cluster
    in_sync = len(cluster.isr)
    needed = cluster.min_in_sync or obs.required_in_sync
    writable = cluster.leader is not None and in_sync >= needed
    progressing = rollout_pending(obs.sts) if obs.sts else True
    short = ready_replicas < obs.replicas or in_sync < obs.replicas

    if obs.failure:
        phase, message = FAILED, obs.failure
    elif obs.problem:
        phase, message = DEGRADED, obs.problem
    elif ready_replicas == 0 and cluster.leader is None:
        phase, message = PENDING, "waiting for the first pod to become ready"
    elif progressing:
        phase, message = PROGRESSING, f"rolling out: {ready_replicas}/{obs.replicas} pods ready"
    elif not writable:
        phase = UNAVAILABLE
        message = ("no leader elected" if cluster.leader is None
                   else f"only {in_sync} in-sync replicas, {needed} needed to accept writes")
    elif short:
        phase, message = DEGRADED, f"{ready_replicas}/{obs.replicas} pods ready, {in_sync} in sync"
    else:
        phase, message = READY, f"leader {cluster.leader}, {in_sync}/{obs.replicas} replicas in sync"
    if obs.scaling and phase not in (FAILED, PENDING):
        message += f"; {obs.scaling}"
    if obs.min_in_sync is not None and obs.min_in_sync < obs.required_in_sync and phase != FAILED:
        message += (f"; minInSync is {obs.min_in_sync} until the new replicas catch up, then "
                    f"{obs.required_in_sync}")

    conditions = [
        ConditionState("Ready", phase == READY,
                       "StoreReady" if phase == READY else phase, message),
        ConditionState("Progressing", phase in (PENDING, PROGRESSING),
                       "RollingOut" if phase in (PENDING, PROGRESSING) else "Settled", message),
        ConditionState("Degraded", phase in (DEGRADED, UNAVAILABLE, FAILED),
                       phase if phase in (DEGRADED, UNAVAILABLE, FAILED) else "FullRedundancy", message),
    ]
    return phase, conditions, message


def merge_conditions(old: Sequence[Mapping[str, Any]] | None, new: Sequence[ConditionState],
                     generation: int, now: str) -> list[dict[str, Any]]:
    """Kubernetes-style conditions; lastTransitionTime moves only when a condition's status flips."""
    previous = {c.get("type"): c for c in old or ()}
    result = []
    for cond in new:
        status = "True" if cond.status else "False"
        before = previous.get(cond.type) or {}
        since = before.get("lastTransitionTime") if before.get("status") == status else None
        result.append({"type": cond.type, "status": status, "reason": cond.reason, "message": cond.message,
                       "lastTransitionTime": since or now, "observedGeneration": generation})
    return result


def status_patch(obs: Observation, old_status: Mapping[str, Any] | None, now: str,
                 selector: str) -> dict[str, Any]:
    """The `.status` the operator writes for an observation."""
    phase, conditions, message = compute(obs)
    sts_status = (obs.sts or {}).get("status") or {}
    old = old_status or {}
    return {
        "phase": phase,
        "message": message,
        "conditions": merge_conditions(old.get("conditions"), conditions, obs.generation, now),
        "replicas": int(sts_status.get("replicas") or 0),
        "readyReplicas": int(sts_status.get("readyReplicas") or 0),
        "selector": selector,
        "leader": obs.cluster.leader,
        "epoch": obs.cluster.epoch,
        "lastPosition": obs.cluster.committed_position,
        "inSyncReplicas": list(obs.cluster.isr),
        # What the leader enforces (it re-reads the operator's value within about a minute).
        "minInSync": obs.cluster.min_in_sync if obs.cluster.min_in_sync is not None else obs.min_in_sync,
    }


def scale_down_refusal(store: str, from_replicas: int, to_replicas: int, min_in_sync: int | None,
                       cluster: ClusterView) -> str | None:
    """Why scaling from `from_replicas` to `to_replicas` would break the in-sync set, or None if it is safe.

    The bar is the larger of the minInSync the running leader enforces and the one the spec asks for
    (a majority of the current replicas when unset). StatefulSets remove the highest ordinals first,
    so the pods that go are <store>-<to_replicas> .. <store>-<from_replicas - 1>.
    """
    needed = max(cluster.min_in_sync or 0, min_in_sync if min_in_sync is not None else majority(from_replicas))
    if to_replicas < needed:
        return (f"refusing to scale from {from_replicas} to {to_replicas} replicas: the store needs {needed} "
                f"in-sync replicas (minInSync) to accept writes")
    if cluster.isr:
        leaving = {manifests.pod_name(store, i) for i in range(to_replicas, from_replicas)}
        remaining = [n for n in cluster.isr if n not in leaving]
        if len(remaining) < needed:
            gone = sorted(leaving & set(cluster.isr)) or ["out-of-sync pods only"]
            return (f"refusing to scale from {from_replicas} to {to_replicas} replicas: removing "
                    f"{', '.join(gone)} would leave {len(remaining)} in-sync replicas, {needed} needed")
    return None
