"""Fixtures running the real kopf operator (evstore.operator.handlers) against kmock on 127.0.0.1.

- `k8s`: the Kubernetes API stand-in (kmock emulator, see kmock_emulator.py).
- `nodes`: a fake evstore node on 127.0.0.1 — an aiohttp server answering GET /v1/cluster and
  POST /v1/cluster/step-down per pod with what the test sets. It stands in for the node processes,
  which cannot run inside pods here; the operator reaches it through its real HTTP fetch code.
- `operator`: kopf.operator() in a background task of the test's event loop, stopped on teardown.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp.web
import kmock
import kopf
import pytest
from kubernetes_asyncio.client import Configuration

from evstore.operator.handlers import OperatorDeps, build_registry, operator_memo
from evstore.operator.metrics import OperatorMetrics
from evs_helpers import NAMESPACE, FakeNodes, token_for
from kmock_emulator import K8sEmulator, declare_resources


@pytest.fixture
async def k8s() -> AsyncIterator[K8sEmulator]:
    async with K8sEmulator() as emulator, kmock.Server(emulator):
        declare_resources(emulator)
        yield emulator


@pytest.fixture
async def nodes() -> AsyncIterator[FakeNodes]:
    fake = FakeNodes()

    @aiohttp.web.middleware
    async def require_admin(request: aiohttp.web.Request, handler):
        if request.headers.get("Authorization") != f"Bearer {fake.admin_token}":
            fake.unauthorized.append(request.path)
            return aiohttp.web.json_response({"error": "unauthorized", "message": "token"}, status=401)
        return await handler(request)

    async def cluster(request: aiohttp.web.Request) -> aiohttp.web.Response:
        pod = request.match_info["pod"]
        fake.asked.append(pod)
        if fake.cluster_delay:
            fake.slow_answer.set()
            await asyncio.sleep(fake.cluster_delay)  # a slow node, as seen by the operator's status pass
        if pod not in fake.clusters:
            return aiohttp.web.json_response({"error": "unavailable", "message": "down"}, status=503)
        return aiohttp.web.json_response(fake.clusters[pod])

    async def step_down(request: aiohttp.web.Request) -> aiohttp.web.Response:
        fake.step_downs.append(request.match_info["pod"])
        if fake.on_step_down is not None:
            fake.on_step_down(request.match_info["pod"])
        return aiohttp.web.json_response({}, status=fake.step_down_status)

    app = aiohttp.web.Application(middlewares=[require_admin])
    app.router.add_get("/pods/{pod}/v1/cluster", cluster)
    app.router.add_post("/pods/{pod}/v1/cluster/step-down", step_down)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@dataclass
class RunningOperator:
    deps: OperatorDeps
    thread: threading.Thread


@pytest.fixture
def deps_overrides() -> dict:
    """OperatorDeps fields a test module replaces (override this fixture in the module)."""
    return {}


@pytest.fixture
async def operator(k8s: K8sEmulator, nodes: FakeNodes, deps_overrides: dict) -> AsyncIterator[RunningOperator]:
    """kopf.operator() on its own event loop in a thread, as in production (kopf treats every task of
    its loop that it did not start as hung at shutdown, so it must not share the test's loop)."""
    api_url = str(k8s.url).rstrip("/")

    async def configuration() -> Configuration:
        return Configuration(host=api_url)

    deps = OperatorDeps(
        kube_configuration=configuration,
        cluster_url=lambda store, ns, pod: f"{nodes.url}/pods/{pod}/v1/cluster",
        step_down_url=lambda store, ns, pod: f"{nodes.url}/pods/{pod}/v1/cluster/step-down",
        status_interval=0.3,
        metrics=OperatorMetrics(),
        new_secret=lambda: "generated-test-secret",
        new_token=token_for,
        dashboards=lambda: {"evstore-overview.json": '{"title": "evstore"}'},
        **deps_overrides,
    )
    settings = kopf.OperatorSettings()
    settings.networking.request_timeout = 10
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(kopf.operator(
                registry=build_registry(deps.status_interval), settings=settings, standalone=True,
                clusterwide=False, namespaces=[NAMESPACE], stop_flag=stop, ready_flag=ready,
                memo=operator_memo(deps)))
        except BaseException as exc:  # reported by the fixture
            errors.append(exc)

    thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(ready.wait, 15), "the operator did not start"
        yield RunningOperator(deps, thread)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 20)
    assert not thread.is_alive(), "the operator did not stop"
    assert not errors, errors
