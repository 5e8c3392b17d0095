"""Entry point of `evstore operator`: the kopf operator for one namespace, standalone (no peering)."""
from __future__ import annotations

import asyncio
import logging
import os

import kopf
from prometheus_client import start_http_server

from evstore.operator.handlers import OperatorDeps, build_registry
from evstore.operator.metrics import OperatorMetrics


def watched_namespace(namespace: str | None) -> str:
    chosen = namespace or os.environ.get("WATCH_NAMESPACE") or ""
    if not chosen:
        raise SystemExit("evstore operator: name the namespace to watch (--namespace or WATCH_NAMESPACE)")
    return chosen


def run(namespace: str | None = None, metrics_port: int = 8080, verbose: bool = False) -> None:
    """Run the operator until interrupted; serve its Prometheus metrics on metrics_port (0 = off)."""
    chosen = watched_namespace(namespace)
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    if not verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    metrics = OperatorMetrics()
    if metrics_port:
        start_http_server(metrics_port, registry=metrics.registry)
    interval = float(os.environ.get("EVSTORE_OPERATOR_STATUS_INTERVAL", "10"))
    registry = build_registry(OperatorDeps(metrics=metrics, status_interval=interval))
    asyncio.run(kopf.operator(registry=registry, standalone=True, clusterwide=False, namespaces=[chosen],
                              liveness_endpoint=None))
