"""The operator's liveness endpoint, served by its own event loop: a stuck loop cannot answer, so the
kubelet's probe times out and restarts the pod (the metrics server runs in a thread and would not)."""
from __future__ import annotations

from aiohttp import web


async def start_health_server(port: int, host: str = "0.0.0.0") -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
