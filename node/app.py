"""Wiring: settings -> storage -> log -> aiohttp application; `main` runs a node until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from typing import Sequence

from aiohttp import web

from .api import ops, streams
from .api.keys import LOG_KEY, METRICS_KEY, READY_KEY, SETTINGS_KEY, STARTED_KEY
from .api.middleware import MIDDLEWARES
from .config import ConfigError, Settings, load_settings
from .log import Log
from .metrics import NodeMetrics
from .storage import Storage

log = logging.getLogger("evstore.node")


def create_app(settings: Settings) -> web.Application:
    """The node's application; its storage opens on startup and closes (flushed) on cleanup."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=MIDDLEWARES)
    metrics = NodeMetrics()
    metrics.leader.set(1)
    metrics.members.set(1)
    metrics.isr_size.set(1)
    storage = Storage(settings.data_dir, durability=settings.durability, sync_interval=settings.sync_interval,
                      metrics=metrics)
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics
    app[LOG_KEY] = Log(storage, metrics)
    app[STARTED_KEY] = time.time()
    app[READY_KEY] = {"ready": False, "reason": "starting"}
    ops.add_routes(app)
    streams.add_routes(app)
    from .api import openapi
    openapi.add_routes(app)
    app.cleanup_ctx.append(_storage_context)
    return app


async def _storage_context(app: web.Application):
    storage = app[LOG_KEY].storage
    await asyncio.to_thread(storage.open)
    app[READY_KEY].update(ready=True, reason="")
    log.info("log open at %s (head position %d)", storage.path, storage.head)
    yield
    app[READY_KEY].update(ready=False, reason="shutting down")
    await asyncio.to_thread(storage.close)
    log.info("log closed")


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    log.info("evstore node %s of store %s listening on %s (durability %s)", settings.node_id, settings.store_id,
             settings.url, settings.durability)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping: finishing requests and flushing the log")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"evstore serve: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(f"evstore serve: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
