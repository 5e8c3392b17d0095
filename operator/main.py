"""Entry point of `evstore operator`: the kopf operator for one namespace.

Several replicas may run: they elect one active operator through a Lease (leadership.py); the
others wait. Every replica serves /healthz from its event loop (health.py) for the liveness probe.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

import kopf
from prometheus_client import start_http_server

from evstore.operator.handlers import OperatorDeps, build_registry, operator_memo
from evstore.operator.health import start_health_server
from evstore.operator.kube import Kube, load_configuration
from evstore.operator.leadership import LeaseElector
from evstore.operator.metrics import OperatorMetrics

LEASE_NAME = "evstore-operator"
log = logging.getLogger("evstore.operator")


def watched_namespace(namespace: str | None) -> str:
    chosen = namespace or os.environ.get("WATCH_NAMESPACE") or ""
    if not chosen:
        raise SystemExit("evstore operator: name the namespace to watch (--namespace or WATCH_NAMESPACE)")
    return chosen


def run(namespace: str | None = None, metrics_port: int = 8080, verbose: bool = False) -> int:
    """Run the operator until interrupted or until it loses its Lease (then exit 1: the pod restarts
    and stands by); serve its Prometheus metrics on metrics_port (0 = off)."""
    chosen = watched_namespace(namespace)
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    if not verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    metrics = OperatorMetrics()
    if metrics_port:
        start_http_server(metrics_port, registry=metrics.registry)
    interval = float(os.environ.get("EVSTORE_OPERATOR_STATUS_INTERVAL", "10"))
    health_port = int(os.environ.get("EVSTORE_OPERATOR_HEALTH_PORT", "8081"))
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    deps = OperatorDeps(metrics=metrics, status_interval=interval)
    return asyncio.run(run_elected(deps, namespace=chosen, identity=identity, health_port=health_port))


async def run_elected(deps: OperatorDeps, *, namespace: str, identity: str, health_port: int,
                      lease_duration: float = 15.0, renew_every: float = 5.0) -> int:
    health = await start_health_server(health_port) if health_port else None
    kube = Kube(await deps.kube_configuration())
    try:
        elector = LeaseElector(kube, namespace, LEASE_NAME, identity, duration=lease_duration,
                               renew_every=renew_every)
        await elector.acquire()
        stop = asyncio.Event()
        operator = asyncio.create_task(kopf.operator(
            registry=build_registry(deps.status_interval), memo=operator_memo(deps), standalone=True,
            clusterwide=False, namespaces=[namespace], liveness_endpoint=None, stop_flag=stop))
        holding = asyncio.create_task(elector.hold())
        await asyncio.wait({operator, holding}, return_when=asyncio.FIRST_COMPLETED)
        lost = holding.done()
        stop.set()  # kopf stops its handlers; the next holder resumes them
        holding.cancel()
        await asyncio.gather(operator, holding, return_exceptions=True)
        if lost:
            log.warning("operator %s stopped: its lease is gone", identity)
            return 1
        return 0
    finally:
        await kube.close()
        if health is not None:
            await health.cleanup()
