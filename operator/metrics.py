"""Prometheus metrics of the operator (`evstore_operator_*`), served on its own port."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# created at zero at start, so that rate() and increase() see the first error after a restart
HANDLERS = ("reconcile", "delete", "status")
RESULTS = ("ok", "retry", "error")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter("evstore_operator_reconciles", "Reconciliations by handler and result",
                                  ["handler", "result"], registry=r)
        self.reconcile_errors = Counter("evstore_operator_reconcile_errors", "Reconciliations that failed",
                                        ["handler"], registry=r)
        self.reconcile_duration = Histogram("evstore_operator_reconcile_duration_seconds",
                                            "Duration of one reconciliation", ["handler"], registry=r)
        self.managed_stores = Gauge("evstore_operator_managed_stores", "EventStore resources handled", registry=r)
        self.ready_stores = Gauge("evstore_operator_ready_stores", "EventStore resources in phase Ready", registry=r)
        self.status_probe_failures = Counter("evstore_operator_status_probe_failures",
                                             "Failed asks of a node's /v1/cluster", registry=r)
        self.scale_down_refusals = Counter("evstore_operator_scale_down_refusals",
                                           "Scale-downs reverted because the in-sync set needs the pods", registry=r)
        for handler in HANDLERS:
            self.reconcile_errors.labels(handler)
            self.reconcile_duration.labels(handler)
            for result in RESULTS:
                self.reconciles.labels(handler, result)
