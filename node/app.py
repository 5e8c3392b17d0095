"""Wiring: settings -> storage -> log -> aiohttp application; `main` runs a node until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import resource
import signal
import sys
import time
from typing import Sequence

import prometheus_client
from aiohttp import web

from .api import ops, snapshots, streams, subscribe
from .api import subscriptions as subscription_routes
from .api.keys import CLUSTER_KEY, LOG_KEY, METRICS_KEY, READY_KEY, SETTINGS_KEY, STARTED_KEY
from .api.connections import MAX_REFUSING, RESERVED, ConnectionGate
from .api.middleware import MIDDLEWARES, quiet_answered_body_errors
from .config import ConfigError, Settings, load_settings
from .log import Log
from .metrics import NodeMetrics
from .storage import Storage
from .subscriptions.persistent import PersistentSubscriptions
from .subscriptions.transient import TransientSubscriptions

log = logging.getLogger("evstore.node")


def create_app(settings: Settings) -> web.Application:
    """The node's application; its storage opens on startup and closes (flushed) on cleanup."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=MIDDLEWARES)
    metrics = NodeMetrics()
    storage = Storage(settings.data_dir, durability=settings.durability, sync_interval=settings.sync_interval,
                      metrics=metrics)
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics
    app[LOG_KEY] = Log(storage, metrics, clustered=settings.clustered)
    if settings.clustered:
        app[CLUSTER_KEY] = _cluster_member(settings, app[LOG_KEY], metrics)
        from .api import cluster
        cluster.add_routes(app)
    else:
        metrics.set_role(leader=True, epoch=0, isr_size=1)
        metrics.members.set(1)
    app[STARTED_KEY] = time.time()
    app[READY_KEY] = {"ready": False, "reason": "starting"}
    ops.add_routes(app)
    streams.add_routes(app)
    snapshots.add_routes(app)
    subscribe.add_routes(app, TransientSubscriptions(app[LOG_KEY], max_subscribers=settings.max_subscribers,
                                                     metrics=metrics))
    subscription_routes.add_routes(app, PersistentSubscriptions(app[LOG_KEY], member=app.get(CLUSTER_KEY),
                                                                metrics=metrics))
    from .api import openapi
    openapi.add_routes(app)
    app.cleanup_ctx.append(_storage_context)
    app.cleanup_ctx.append(_persistent_subscriptions_context)  # starts after the log opens, stops before
    app.on_shutdown.append(_close_persistent_subscriptions)  # before aiohttp waits for open WebSockets
    return app


def _cluster_member(settings: Settings, log_: Log, metrics: NodeMetrics):
    from .cluster.discovery import Discovery
    from .cluster.etcd import EtcdCoordinator
    from .cluster.member import ClusterConfig, ClusterMember
    from .cluster.replication import Timing

    from .cluster.auth import LeaderRecords
    from .cluster.etcd import EtcdAccess

    coordinator = EtcdCoordinator(
        settings.etcd_endpoints, settings.store_id, lease_ttl=settings.lease_ttl,
        on_etcd_up=lambda up: metrics.etcd_up.set(1 if up else 0),
        leader_records=LeaderRecords(settings.cluster_secret, settings.store_id,
                                     accept_legacy=settings.peer_auth_compat),
        on_rejected_leader=lambda reason: metrics.leader_records_rejected.labels(reason=reason).inc(),
        access=EtcdAccess(username=settings.etcd_username, password=settings.etcd_password,
                          ca_file=settings.etcd_ca_file),
        metrics=metrics)

    async def etcd_members():
        return await coordinator.members()

    discovery = Discovery(settings.store_id, settings.node_id, settings.url, settings.cluster_secret,
                          methods=settings.discovery, interfaces=settings.discovery_interfaces,
                          dns_name=settings.discovery_dns, port=settings.port,
                          etcd_members=etcd_members if "etcd" in settings.discovery else None, metrics=metrics)
    config = ClusterConfig(settings.store_id, settings.node_id, settings.url, settings.cluster_secret,
                           min_in_sync=settings.min_in_sync, cluster_size=settings.cluster_size,
                           min_in_sync_file=settings.min_in_sync_file,
                           timing=Timing(settings.lease_ttl), peer_auth_compat=settings.peer_auth_compat)
    return ClusterMember(config, log_, coordinator, discovery, metrics)


async def _storage_context(app: web.Application):
    log_ = app[LOG_KEY]
    await log_.open()
    log.info("log open at %s (head position %d)", log_.path, log_.head)
    member = app.get(CLUSTER_KEY)
    if member is not None:
        await member.start()
    trimming = asyncio.get_running_loop().create_task(log_.keep_system_streams_trimmed(), name="evstore-trim")
    app[READY_KEY].update(ready=True, reason="")
    yield
    app[READY_KEY].update(ready=False, reason="shutting down")
    trimming.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await trimming
    if member is not None:
        await member.close()
    await log_.close()
    log.info("log closed")


async def _persistent_subscriptions_context(app: web.Application):
    service = app[subscription_routes.PERSISTENT_KEY]
    await service.start()
    yield
    await service.close()


async def _close_persistent_subscriptions(app: web.Application) -> None:
    await app[subscription_routes.PERSISTENT_KEY].close()


LINGERING_SECONDS = 2.0
# how long a stopping node waits for requests in flight (a Kubernetes pod has 30 s before its SIGKILL, and the
# log's close must fit in what is left)
SHUTDOWN_SECONDS = 15.0
GC_THRESHOLDS = (50_000, 50, 100)  # Python's defaults are (700, 10, 10)


def tune_garbage_collector() -> None:
    """Fewer, cheaper cyclic collections: requests allocate many short-lived containers (a 100-event append
    parses 200 dicts), which refcounting frees, yet each 700 of them start a collection. Objects made at
    start-up are frozen out of every later collection. Measured in six A/B rounds of `bench/append.py`:
    single-event appends at concurrency 64 +13 %, 100-event appends +8 % (medians)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
HEAP_BLOCKS_UP_TO = 4 << 20
HEAP_KEEPS_FREE = 16 << 20


def tune_allocator() -> bool:
    """Fixed glibc malloc thresholds: blocks up to HEAP_BLOCKS_UP_TO come from the heap, and up to HEAP_KEEPS_FREE
    of freed memory stays at a heap's top. glibc's own thresholds move with the sizes freed so far; where they
    settle depends on the node's history, and after some it gives a read reply's memory (~0.5 MB per 1,000
    events, plus aiohttp's copy of it with the headers) back to the system after every request, to fault it in
    again on the next: 60–70 page faults per page read at concurrency 1 in some runs of bench/append.py, none in
    others. False where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_KEEPS_FREE))


FILES_BESIDES_CONNECTIONS = 256  # SQLite files, etcd and peer sockets, outgoing connections


MIN_CONNECTIONS = 16  # what the connection bound never goes below, however few files the node may open


def raise_open_files_limit(connections: int) -> int:
    """Every connection holds a socket: lift the soft limit on open files (often 1024) toward the hard one, so
    that --max-connections can be reached, with the reserve and the refused connections being answered. The
    connection bound the files allow: past the real limit accept() fails (EMFILE) and nobody gets an answer."""
    besides = RESERVED + MAX_REFUSING + FILES_BESIDES_CONNECTIONS
    wanted = connections + besides
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return connections
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if raised > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised >= wanted:
        return connections
    allowed = max(MIN_CONNECTIONS, raised - besides)
    log.warning("open files are limited to %d: at most %d connections (not --max-connections=%d) may be open",
                raised, allowed, connections)
    return allowed


async def serve(settings: Settings) -> None:
    max_connections = raise_open_files_limit(settings.max_connections)
    tune_allocator()
    # no `_created` sample beside each counter and histogram: nothing reads them, and they double a scrape
    prometheus_client.disable_created_metrics()
    app = create_app(settings)
    # lingering: how long aiohttp still reads (and drops) the rest of a body it answered early, e.g. with a 408
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=settings.keepalive_timeout,
                           lingering_time=LINGERING_SECONDS, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    app[METRICS_KEY].open_connections.set_function(lambda: len(runner.server.connections))
    loop = asyncio.get_running_loop()
    # the listening socket is the node's own (not a web.TCPSite) so that its protocol factory can bound the
    # connections; runner.cleanup still closes and drains those aiohttp holds
    gate = ConnectionGate(runner.server, maximum=max_connections,
                          refused=app[METRICS_KEY].connections_refused.inc)
    listener = await loop.create_server(gate, settings.host, settings.port, reuse_address=True, backlog=128)
    tune_garbage_collector()
    log.info("evstore node %s of store %s listening on %s (durability %s)", settings.node_id, settings.store_id,
             settings.url, settings.durability)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping: finishing requests and flushing the log")
    finally:
        listener.close()
        gate.close()
        await runner.cleanup()


def run_event_loop(coroutine, fast: bool) -> None:
    """uvloop for a single node (about a quarter more single-event appends per second here); a clustered node
    keeps asyncio's own loop, which the etcd client's grpc.aio is made for."""
    if fast:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(coroutine)
            return
    asyncio.run(coroutine)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"evstore serve: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    quiet_answered_body_errors()
    try:
        run_event_loop(serve(settings), fast=not settings.clustered)
    except OSError as exc:
        print(f"evstore serve: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
