"""Pure status rules of the operator: URLs, merged cluster view, phases, conditions, scale-down guard."""
from __future__ import annotations

import aiohttp.web

from evstore.operator import status as st


def test_urls_use_pod_dns_under_the_headless_service():
    assert st.cluster_url("orders", "shop", "orders-1") == "http://orders-1.orders-peers.shop.svc:7113/v1/cluster"
    assert st.step_down_url("orders", "shop", "orders-0").endswith("/v1/cluster/step-down")


def _view(node, epoch, role="follower", leader="orders-0", isr=("orders-0",), position=5):
    return {"node": node, "role": role, "leader": {"node": leader, "url": "u"}, "epoch": epoch,
            "committedPosition": position, "isr": list(isr), "minInSync": 2}


def test_highest_epoch_wins_over_a_deposed_leader():
    merged = st.merge_cluster_views({
        "orders-0": _view("orders-0", 3, role="leader", leader="orders-0", isr=("orders-0",)),
        "orders-1": _view("orders-1", 4, leader="orders-2", isr=("orders-1", "orders-2"), position=9),
    })
    assert (merged.leader, merged.epoch, merged.committed_position) == ("orders-2", 4, 9)
    assert merged.isr == ("orders-1", "orders-2") and merged.answered == ("orders-0", "orders-1")
    single = st.merge_cluster_views({"solo-0": {"node": "solo-0", "role": "single", "leader": None, "epoch": 0,
                                                "committedPosition": 3, "isr": []}})
    assert (single.leader, single.isr) == ("solo-0", ("solo-0",))
    assert st.merge_cluster_views({}) == st.ClusterView()


def _sts(replicas=3, ready=3, rev=("a", "a"), generation=1, observed=1, updated=None):
    return {"metadata": {"generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": replicas, "readyReplicas": ready,
                       "updatedReplicas": replicas if updated is None else updated,
                       "currentRevision": rev[0], "updateRevision": rev[1]}}


def _phase(sts, cluster, failure=None, replicas=3):
    return st.compute(st.Observation(generation=1, replicas=replicas, required_in_sync=2, sts=sts,
                                     cluster=cluster, failure=failure))[0]


def test_phases():
    healthy = st.ClusterView(leader="o-0", epoch=1, isr=("o-0", "o-1", "o-2"), min_in_sync=2)
    assert _phase(_sts(), healthy) == st.READY
    assert _phase(_sts(ready=0), st.ClusterView()) == st.PENDING
    assert _phase(_sts(rev=("a", "b"), updated=2), healthy) == st.PROGRESSING
    # Every pod on the update revision: done, though OnDelete never advances currentRevision.
    assert _phase(_sts(rev=("a", "b")), healthy) == st.READY
    assert _phase(_sts(generation=2, observed=1), healthy) == st.PROGRESSING
    assert _phase(_sts(ready=2), healthy) == st.DEGRADED
    assert _phase(_sts(), st.ClusterView(leader="o-0", isr=("o-0", "o-1"), min_in_sync=2)) == st.DEGRADED
    assert _phase(_sts(), st.ClusterView(leader="o-0", isr=("o-0",), min_in_sync=2)) == st.UNAVAILABLE
    assert _phase(_sts(), st.ClusterView(isr=("o-0", "o-1", "o-2"))) == st.UNAVAILABLE
    assert _phase(_sts(), healthy, failure="bad spec") == st.FAILED


def test_last_transition_time_moves_only_on_flips():
    ready = [st.ConditionState("Ready", True, "StoreReady", "ok")]
    first = st.merge_conditions(None, ready, 1, "2026-01-01T00:00:00Z")
    same = st.merge_conditions(first, ready, 2, "2026-01-01T00:05:00Z")
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same[0]["observedGeneration"] == 2
    flipped = st.merge_conditions(same, [st.ConditionState("Ready", False, "Degraded", "x")], 2,
                                  "2026-01-01T00:09:00Z")
    assert (flipped[0]["status"], flipped[0]["lastTransitionTime"]) == ("False", "2026-01-01T00:09:00Z")


def test_scale_down_guard():
    full = st.ClusterView(leader="o-0", isr=("o-0", "o-1", "o-2", "o-3", "o-4"), min_in_sync=3)
    assert st.scale_down_refusal("o", 5, 3, None, full) is None
    assert "needs 3" in st.scale_down_refusal("o", 5, 2, None, full)
    lagging = st.ClusterView(leader="o-0", isr=("o-0", "o-1", "o-3", "o-4"), min_in_sync=3)
    assert "o-3, o-4" in st.scale_down_refusal("o", 5, 3, None, lagging)
    # The spec may ask for more than the running leader enforces, never less.
    assert st.scale_down_refusal("o", 3, 2, 3, st.ClusterView(isr=("o-0", "o-1", "o-2"), min_in_sync=2))
    assert st.scale_down_refusal("o", 3, 1, 1, st.ClusterView(isr=("o-0", "o-1", "o-2"), min_in_sync=2))
    assert st.scale_down_refusal("o", 3, 1, 1, st.ClusterView(isr=("o-0", "o-1", "o-2"), min_in_sync=1)) is None
    # Unreachable nodes: only the count rule applies (majority of the current replicas).
    assert st.scale_down_refusal("o", 3, 2, None, st.ClusterView()) is None
    assert st.scale_down_refusal("o", 3, 1, None, st.ClusterView())


async def test_fetch_cluster_views_over_http_skips_pods_that_fail():
    """A stand-in node on 127.0.0.1 (no evstore pods here) answering /v1/cluster for one pod only."""
    async def cluster(request):
        if request.headers.get("Authorization") != "Bearer admin-token-0123456789":
            return aiohttp.web.json_response({"error": "unauthorized"}, status=401)
        if request.match_info["pod"] == "o-0":
            return aiohttp.web.json_response(_view("o-0", 2, role="leader"))
        return aiohttp.web.json_response({"error": "unavailable"}, status=503)

    app = aiohttp.web.Application()
    app.router.add_get("/{pod}/v1/cluster", cluster)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        urls = {p: f"{base}/{p}/v1/cluster" for p in ("o-0", "o-1")}
        views = await st.fetch_cluster_views(urls, st.http_get_json, "admin-token-0123456789")
        assert list(views) == ["o-0"] and views["o-0"]["epoch"] == 2
        assert await st.fetch_cluster_views(urls, st.http_get_json, None) == {}  # 401 without the token
        closed = await st.fetch_cluster_views({"o-2": "http://127.0.0.1:9/v1/cluster"}, st.http_get_json,
                                              "admin-token-0123456789")
        assert closed == {}
    finally:
        await runner.cleanup()
