"""Operations endpoints: health, metrics, node info, cluster view, admin verify and scavenge."""
from __future__ import annotations

import os
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import evstore

from . import validation as v
from .cluster import leader_write
from .keys import CLUSTER_KEY, LOG_KEY, METRICS_KEY, READY_KEY, SETTINGS_KEY
from .middleware import error_response
from .shape import json_response, rfc3339

FEATURES = ["streams", "all", "idempotent-appends", "metadata", "soft-delete", "hard-delete", "verify",
            "scavenge", "multi-stream-append", "snapshots"]


async def live(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    state = request.app[READY_KEY]
    if not state.get("ready"):
        return error_response(503, "unavailable", "the node is not ready", reason=state.get("reason", "starting"),
                              retryAfter=1)
    member = request.app.get(CLUSTER_KEY)
    if member is None:
        return json_response({"status": "ready", "role": "single"})
    ok, reason = member.ready()
    if not ok:
        return error_response(503, "unavailable", "the node is not ready", reason=reason, role=member.role,
                              retryAfter=1)
    return json_response({"status": "ready", "role": member.role})


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS_KEY]
    log = request.app[LOG_KEY]
    sizes = log.size_by_file()
    registry.storage_bytes.set(sum(sizes.values()))
    for file, size in sizes.items():
        registry.storage_file_bytes.labels(file=file).set(size)
    try:
        volume = os.statvfs(request.app[SETTINGS_KEY].data_dir)
    except OSError:
        pass
    else:
        registry.volume_free_bytes.set(volume.f_bavail * volume.f_frsize)
        registry.volume_total_bytes.set(volume.f_blocks * volume.f_frsize)
    registry.head_position.set(log.head)
    registry.committed_position.set(log.visible.position)
    registry.ready.set(1 if _is_ready(request) else 0)
    member = request.app.get(CLUSTER_KEY)
    registry.min_in_sync.set(member.min_in_sync() if member is not None else 1)
    return web.Response(body=generate_latest(registry.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _is_ready(request: web.Request) -> bool:
    if not request.app[READY_KEY].get("ready"):
        return False
    member = request.app.get(CLUSTER_KEY)
    return member is None or member.ready()[0]


async def _precreate_metrics(app: web.Application) -> None:
    """Every route is added by now: create the series panels and alerts select at zero (see NodeMetrics)."""
    metrics = app[METRICS_KEY]
    metrics.build_info.labels(version=evstore.__version__).set(1)
    metrics.precreate_http((route.method, route.resource.canonical) for route in app.router.routes()
                           if route.resource is not None)


async def info(request: web.Request) -> web.Response:
    v.query_params(request.query, {})
    settings = request.app[SETTINGS_KEY]
    return json_response({"version": evstore.__version__, "store": settings.store_id, "node": settings.node_id,
                          "mode": "cluster" if settings.clustered else "single", "durability": settings.durability, "features": FEATURES})


async def cluster(request: web.Request) -> web.Response:
    v.query_params(request.query, {})
    settings = request.app[SETTINGS_KEY]
    head = request.app[LOG_KEY].head
    me = {"node": settings.node_id, "url": settings.url, "role": "single", "position": head, "inSync": True,
          "lag": 0, "lastSeen": rfc3339(time.time_ns() // 1000)}
    return json_response({"store": settings.store_id, "node": settings.node_id, "role": "single",
                          "leader": {"node": settings.node_id, "url": settings.url}, "epoch": 0,
                          "committedPosition": head, "minInSync": 1, "isr": [settings.node_id], "members": [me]})


async def step_down(request: web.Request) -> web.Response:
    v.query_params(request.query, {})
    await v.refuse_body(request)
    return error_response(409, "no_in_sync_follower", "a single node has no follower to hand leadership to")


async def verify(request: web.Request) -> web.Response:
    v.query_params(request.query, {})
    await v.refuse_body(request)
    return json_response(await request.app[LOG_KEY].verify())  # the log counts what it finds


async def scavenge(request: web.Request) -> web.Response:
    # on a cluster the leader writes the scavenge into the log and every node applies it at that position
    v.query_params(request.query, {})
    await v.refuse_body(request)
    return json_response(await request.app[LOG_KEY].scavenge())


def add_routes(app: web.Application) -> None:
    app.on_startup.append(_precreate_metrics)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/info", info)
    if not app[SETTINGS_KEY].clustered:
        app.router.add_get("/v1/cluster", cluster)
        app.router.add_post("/v1/cluster/step-down", step_down)
    app.router.add_post("/v1/admin/verify", verify)
    app.router.add_post("/v1/admin/scavenge", leader_write(scavenge))
