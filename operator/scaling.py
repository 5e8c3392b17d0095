"""How a store changes size without two nodes accepting writes and without stopping writes.

A store the operator manages always runs clustered (etcd and a cluster secret even at one replica),
so growing it only adds followers to a cluster whose leader already holds the log. Two rules keep
every step safe, both pure functions of what the operator read:

- The StatefulSet grows only once every pod it has runs its current template and is ready: a pod
  still on an older template (a single node from before clustering was on) is restarted into the
  cluster first, so new pods never form a second cluster beside it.
- minInSync (a majority of spec.replicas unless set) reaches the nodes through a mounted ConfigMap
  they re-read; it rises only once the cluster has that many in-sync replicas (a scale-up never
  stops writes) and falls at once.
"""
from __future__ import annotations

from typing import Any, Mapping

from evstore.operator.spec import majority


def rolled_out(sts: Mapping[str, Any], desired_template: Mapping[str, Any], is_subset) -> bool:
    """Every pod of the StatefulSet runs `desired_template` and is ready (as its status reports)."""
    spec, status = sts.get("spec") or {}, sts.get("status") or {}
    replicas = int(spec.get("replicas") or 0)
    if not is_subset(desired_template, spec.get("template")):
        return False  # the template is about to change: its pods must restart before others join
    if int(status.get("observedGeneration") or 0) < int((sts.get("metadata") or {}).get("generation") or 0):
        return False
    # Not currentRevision: with the OnDelete strategy the controller does not advance it.
    return (bool(status.get("updateRevision")) and int(status.get("replicas") or 0) == replicas
            and int(status.get("updatedReplicas") or 0) == replicas
            and int(status.get("readyReplicas") or 0) == replicas)


def statefulset_replicas(wanted: int, sts: Mapping[str, Any] | None, desired_template: Mapping[str, Any],
                         is_subset) -> int:
    """The size to give the StatefulSet now: `wanted`, except that a scale-up waits for a roll-out."""
    if sts is None:
        return wanted
    running = int((sts.get("spec") or {}).get("replicas") or 0)
    if wanted <= running or rolled_out(sts, desired_template, is_subset):
        return wanted
    return running


def initial_min_in_sync(required: int, running_replicas: int | None) -> int:
    """minInSync for a store with no in-sync ConfigMap yet: `required` for a new store; for a running
    one (made by an older operator) no more than what its nodes enforced, a majority of its pods."""
    if running_replicas is None:
        return required
    return min(required, majority(running_replicas))


def next_min_in_sync(required: int, current: int, in_sync: int | None) -> int:
    """Lower at once; raise to `required` only once `in_sync` replicas (as the leader reports) suffice."""
    if required <= current:
        return required
    if in_sync is not None and in_sync >= required:
        return required
    return current
