"""The scaling decisions (operator/scaling.py) as pure functions of what the operator reads."""
from __future__ import annotations

from evstore.operator import manifests as m
from evstore.operator import scaling
from evstore.operator.spec import parse_spec


def _sts(spec, *, replicas: int, updated: int, ready: int, generation: int = 2, observed: int = 2) -> dict:
    sts = m.statefulset(spec)
    sts["spec"]["replicas"] = replicas
    sts["metadata"]["generation"] = generation
    sts["status"] = {"observedGeneration": observed, "replicas": replicas, "readyReplicas": ready,
                     "updatedReplicas": updated, "currentRevision": "old", "updateRevision": "new"}
    return sts


def test_the_statefulset_grows_only_once_its_pods_run_the_current_template():
    single = parse_spec("orders", "shop", {"etcd": {"managed": False}})
    grown = parse_spec("orders", "shop", {"replicas": 3})
    template = m.statefulset(grown)["spec"]["template"]
    grow = lambda sts: scaling.statefulset_replicas(3, sts, template, m.is_subset)
    assert grow(None) == 3  # a new store
    assert grow(_sts(single, replicas=1, updated=1, ready=1)) == 1  # the template is about to change
    assert grow(_sts(grown, replicas=1, updated=0, ready=1)) == 1  # pod 0 still on the old revision
    assert grow(_sts(grown, replicas=1, updated=1, ready=0)) == 1  # restarted, not ready yet
    assert grow(_sts(grown, replicas=1, updated=1, ready=1, observed=1)) == 1  # not observed yet
    assert grow(_sts(grown, replicas=1, updated=1, ready=1)) == 3  # (currentRevision lags with OnDelete)
    assert scaling.statefulset_replicas(1, _sts(single, replicas=3, updated=0, ready=0), template,
                                        m.is_subset) == 1  # shrinking never waits


def test_min_in_sync_starts_at_the_configured_size_rises_once_in_sync_and_falls_at_once():
    assert scaling.initial_min_in_sync(2, None) == 2  # a new 3-replica store, from its first pod
    assert scaling.initial_min_in_sync(2, 1) == 1  # a running single node being grown
    assert scaling.next_min_in_sync(2, 1, None) == 1  # no leader answered
    assert scaling.next_min_in_sync(2, 1, 1) == 1  # the new replicas are still copying
    assert scaling.next_min_in_sync(2, 1, 2) == 2
    assert scaling.next_min_in_sync(1, 2, None) == 1
