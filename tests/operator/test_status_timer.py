"""The status timer against kmock: conditions keep their lastTransitionTime while their status stays.

kopf hands a timer the object as its watch last delivered it, and while another handler of the same object
runs (reconcile, on create) that can predate the timer's own previous patch.
"""
from __future__ import annotations

import asyncio
import datetime
import itertools

import pytest

from evs_helpers import EVS, STS, create_evs, eventually, get_object, simulate_statefulset_ready

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def deps_overrides():
    minutes = itertools.count()  # every status pass a minute later: a re-stamped condition cannot hide
    return {"now": lambda: (START + datetime.timedelta(minutes=next(minutes))).strftime("%Y-%m-%dT%H:%M:%SZ")}


def conditions(k8s) -> dict[str, tuple[str, str]]:
    found = (get_object(k8s, EVS, "orders") or {}).get("status") or {}
    return {c["type"]: (c["status"], c["lastTransitionTime"]) for c in found.get("conditions") or ()}


async def test_a_condition_keeps_its_transition_time_while_its_status_stays(k8s, operator, nodes):
    nodes.cluster_delay = 0.2  # status passes that take a while, as against real pods
    await create_evs(k8s, "orders", replicas=1)
    await eventually(lambda: get_object(k8s, STS, "orders"), what="StatefulSet")
    await simulate_statefulset_ready(k8s, "orders")
    seen = [await eventually(lambda: conditions(k8s), what="conditions")]
    for _ in range(12):  # status passes; the snapshots between them catch each patch
        nodes.slow_answer.clear()
        await asyncio.wait_for(nodes.slow_answer.wait(), 15)
        if conditions(k8s) != seen[-1]:
            seen.append(conditions(k8s))
    for before, after in itertools.pairwise(seen):
        for kind, (state, since) in after.items():
            if before.get(kind, (None,))[0] == state:
                assert since == before[kind][1], (kind, seen)
