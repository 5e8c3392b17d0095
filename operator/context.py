"""What every handler shares: the replaceable dependencies (OperatorDeps) and the operator's state
(OperatorState), both kept in kopf's memo; and the metrics wrapper of a handler run."""
from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator, Mapping

import kopf
import yaml
from kubernetes_asyncio.client import Configuration

from evstore.operator import status
from evstore.operator.kube import Kube, load_configuration
from evstore.operator.metrics import OperatorMetrics

DEFAULT_DASHBOARDS_DIR = "/etc/evstore/dashboards"
ALERT_RULES_FILE = "evstore.rules.yaml"


def load_dashboards() -> dict[str, str]:
    """Dashboard JSON files shipped next to the operator (the chart mounts them), by file name."""
    directory = pathlib.Path(os.environ.get("EVSTORE_DASHBOARDS_DIR", DEFAULT_DASHBOARDS_DIR))
    if not directory.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(directory.glob("*.json"))}


def load_alert_rules() -> dict:
    """The alert rules shipped next to the dashboards (the chart mounts rules/evstore.rules.yaml there)."""
    path = pathlib.Path(os.environ.get("EVSTORE_DASHBOARDS_DIR", DEFAULT_DASHBOARDS_DIR)) / ALERT_RULES_FILE
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class OperatorDeps:
    kube_configuration: Callable[[], Awaitable[Configuration]] = load_configuration
    fetch_json: status.FetchJson = status.http_get_json
    post: status.PostEmpty = status.http_post
    cluster_url: Callable[[str, str, str], str] = status.cluster_url
    step_down_url: Callable[[str, str, str], str] = status.step_down_url
    status_interval: float = 10.0
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    dashboards: Callable[[], Mapping[str, str]] = load_dashboards
    alert_rules: Callable[[], Mapping[str, Any]] = load_alert_rules
    new_secret: Callable[[], str] = lambda: secrets.token_urlsafe(32)
    new_token: Callable[[str], str] = lambda role: secrets.token_urlsafe(32)
    # (store, namespace) -> client URLs of its managed etcd, as the operator reaches them.
    etcd_urls: Callable[[str, str], list[str]] = lambda store, namespace: [
        f"http://{store}-etcd-{i}.{store}-etcd.{namespace}.svc:2379" for i in range(3)]
    now: Callable[[], str] = utc_now


@dataclass
class OperatorState:
    deps: OperatorDeps
    kube: Kube | None = None
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    problems: dict[tuple[str, str], str] = field(default_factory=dict)  # lasting, but not a spec error
    rejections: dict[tuple[str, str], str] = field(default_factory=dict)  # a change the API server refused (4xx)
    phases: dict[tuple[str, str], str] = field(default_factory=dict)
    warned: set[tuple[str, str, str]] = field(default_factory=set)
    etcd_auth_done: set[tuple[str, str]] = field(default_factory=set)
    scaling: dict[tuple[str, str], str] = field(default_factory=dict)  # a scale-up waiting, and why
    # the status pass's last patch of a store, and the resourceVersion of the object it was computed from
    status_written: dict[tuple[str, str], tuple[str, dict]] = field(default_factory=dict)

    def warn_once(self, body: Any, reason: str, message: str) -> None:
        """A Warning event for a lasting condition: once per store and operator run, not every pass."""
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""), reason)
        if key not in self.warned:
            self.warned.add(key)
            kopf.warn(body, reason=reason, message=message)

    def status_seen(self, key: tuple[str, str], body: Any) -> tuple[dict, str | None]:
        """A store's status as of its last patch by a status pass, and the resourceVersion it was read at.

        kopf gives a timer the object as its watch last delivered it, and while another handler of the object
        runs, that can be the very version the previous pass patched: its patch is then laid over it, or the
        pass would stamp unchanged conditions with a new lastTransitionTime."""
        seen = dict(body.get("status") or {})
        version = (body.get("metadata") or {}).get("resourceVersion")
        written = self.status_written.get(key)
        if written is not None and version is not None and written[0] == version:
            seen.update(written[1])
        return seen, version

    def client(self) -> Kube:
        if self.kube is None:
            raise kopf.TemporaryError("the Kubernetes client is not ready yet", delay=1)
        return self.kube

    def track(self, namespace: str, name: str, phase: str | None) -> None:
        key = (namespace, name)
        if phase is None:
            self.phases.pop(key, None)
            self.failures.pop(key, None)
            self.problems.pop(key, None)
            self.rejections.pop(key, None)
            self.etcd_auth_done.discard(key)
            self.scaling.pop(key, None)
            self.status_written.pop(key, None)
            self.warned = {w for w in self.warned if w[:2] != key}
        else:
            self.phases[key] = phase
        self.deps.metrics.managed_stores.set(len(self.phases))
        self.deps.metrics.ready_stores.set(sum(p == status.READY for p in self.phases.values()))


@contextlib.contextmanager
def measured(metrics: OperatorMetrics, handler: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    except kopf.TemporaryError:
        metrics.reconciles.labels(handler, "retry").inc()
        raise
    except Exception:
        metrics.reconciles.labels(handler, "error").inc()
        metrics.reconcile_errors.labels(handler).inc()
        raise
    else:
        metrics.reconciles.labels(handler, "ok").inc()
    finally:
        metrics.reconcile_duration.labels(handler).observe(time.perf_counter() - started)
