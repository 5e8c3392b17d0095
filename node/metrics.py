"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process in tests).

Every metric the dashboards use is defined here; tests/unit/test_dashboards.py checks them against
this registry, so define a metric here before a dashboard uses it.

Labelled series that alerts and panels select are created at zero when the node starts (see
`precreate_http`): a counter that first appears at its first increment has no earlier sample, so
`rate()` and `increase()` never see that first 503 or checksum failure.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)

# where a record that fails its checksum can be found ("backup" joins when backups exist)
CORRUPTION_PATHS = ("read", "replication", "verify")
APPEND_RESULTS = ("ok", "wrong_expected_version", "duplicate_event_id", "stream_deleted", "unavailable", "error")
READ_KINDS = ("stream", "all")
GOSSIP_REJECTIONS = ("bad_signature", "other_store", "protocol")
PEER_AUTH_REJECTIONS = ("unsigned", "malformed", "bad_signature", "clock_skew", "replayed", "reply_unsigned")
# statuses created at zero for every public route and method: what the error panels and alerts select (each
# series costs about 10 µs of every scrape, which holds the event loop: 2xx series appear when first used)
PRECREATED_STATUSES = ("400", "404", "409", "500", "503")
INTERNAL_ROUTE_PREFIXES = ("/v1/internal/", "/metrics", "/health/")


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # storage and log
        self.appends = Counter("evstore_appends", "Append requests by result", ["result"], registry=r)
        self.appends_ok = self.appends.labels(result="ok")
        self.events_appended = Counter("evstore_events_appended", "Events appended", registry=r)
        self.bytes_appended = Counter("evstore_bytes_appended", "Bytes of event data and metadata appended", registry=r)
        self.events_read = Counter("evstore_events_read", "Events returned by reads", ["kind"], registry=r)
        self.read_ahead_pages = Counter("evstore_read_ahead_pages", "Pages read ahead that a request took, by whether "
                                        "they still held (used) or were read afresh (stale)", ["outcome"], registry=r)
        self._read_ahead_children = {held: self.read_ahead_pages.labels(outcome="used" if held else "stale")
                                     for held in (True, False)}
        self.append_latency = Histogram("evstore_append_latency_seconds", "Append latency until durable",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.read_latency = Histogram("evstore_read_latency_seconds", "Read latency", ["kind"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.sync_latency = Histogram("evstore_sync_latency_seconds", "Commit and sync latency of one group commit",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.batch_requests = Histogram("evstore_group_commit_requests", "Append requests per group commit",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.batch_events = Histogram("evstore_group_commit_events", "Events per group commit",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.group_commit_reruns = Counter(
            "evstore_group_commit_reruns", "Group commits run a second time, with every event id looked up in the "
            "log, because one of their appends carried an id the log already held (a retry, or an id reused)",
            registry=r)
        self.id_window_ids = Gauge(
            "evstore_id_window_ids", "Random (not UUIDv7) event ids held in the writer's memory until a merge "
            "writes them into the id index in key order (about a million at most)", registry=r)
        self.id_merge_seconds = Histogram(
            "evstore_id_merge_seconds", "Time of one slice of a merge of event ids into the id index (a "
            "transaction of its own on the writer, between group commits)", registry=r)
        self.storage_bytes = Gauge("evstore_storage_bytes", "Bytes used by the log on disk", registry=r)
        self.storage_file_bytes = Gauge("evstore_storage_file_bytes", "Bytes of the log's files on disk: the "
                                        "database (data) and its write-ahead log with its index (wal)", ["file"],
                                        registry=r)
        self.volume_free_bytes = Gauge("evstore_volume_free_bytes", "Bytes free for the node on the data "
                                       "directory's volume (statvfs)", registry=r)
        self.volume_total_bytes = Gauge("evstore_volume_total_bytes", "Size in bytes of the data directory's "
                                        "volume (statvfs)", registry=r)
        self.head_position = Gauge("evstore_head_position", "Position of the last event in the log", registry=r)
        self.committed_position = Gauge("evstore_committed_position", "Position of the last committed event",
                                        registry=r)
        self.checksum_failures = Counter("evstore_checksum_failures", "Records whose checksum did not verify, "
                                         "by the path that found them (read, replication, verify)", ["path"],
                                         registry=r)
        self._checksum_children = {path: self.checksum_failures.labels(path=path) for path in CORRUPTION_PATHS}
        # http
        # forwarded="true": sent on by a follower (which counts the client's request itself), so a sum over
        # forwarded="false" counts each client request once
        self.http_requests = Counter("evstore_http_requests", "HTTP requests by route, method and status",
                                     ["method", "route", "status", "forwarded"], registry=r)
        self.http_latency = Histogram("evstore_http_request_duration_seconds", "HTTP request duration",
                                      ["method", "route", "forwarded"], buckets=LATENCY_BUCKETS, registry=r)
        self.http_in_flight = Gauge("evstore_http_requests_in_flight", "HTTP requests being answered", registry=r)
        self.open_connections = Gauge("evstore_http_open_connections", "Open HTTP connections to the node",
                                      registry=r)
        self.connections_refused = Counter("evstore_http_connections_refused",
                                           "Connections refused with a 503 because --max-connections were open",
                                           registry=r)
        # node
        self.build_info = Gauge("evstore_build_info", "Always 1; the version the node runs", ["version"],
                                registry=r)
        self.start_time = Gauge("evstore_start_time_seconds", "Unix time the node started", registry=r)
        self.start_time.set(time.time())
        self.ready = Gauge("evstore_ready", "1 when /health/ready answers 200", registry=r)
        # cluster (a single node reports itself as leader of a one-member set)
        self.leader = Gauge("evstore_leader", "1 when this node is the leader (or a single node)", registry=r)
        self.epoch = Gauge("evstore_epoch", "Leader epoch known to this node", registry=r)
        self.members = Gauge("evstore_members", "Members known to this node", registry=r)
        self.isr_size = Gauge("evstore_isr_size", "Size of the in-sync replica set", registry=r)
        self.replication_lag_events = Gauge("evstore_replication_lag_events", "Events a follower is behind",
                                            ["follower"], registry=r)
        self.replication_lag_seconds = Gauge("evstore_replication_lag_seconds", "Seconds a follower is behind",
                                             ["follower"], registry=r)
        self.min_in_sync = Gauge("evstore_min_in_sync", "In-sync replicas an append needs (minInSync)", registry=r)
        self.elections = Counter("evstore_elections", "Leader elections this node took part in", registry=r)
        self.leader_changed = Gauge("evstore_leader_changed_timestamp_seconds",
                                    "Unix time this node last saw the leader epoch change", registry=r)
        self._epoch_seen: int | None = None
        self.gossip_peers = Gauge("evstore_gossip_peers", "Peers seen by discovery", registry=r)
        self.gossip_rejected = Counter("evstore_gossip_rejected", "Rejected discovery announcements", ["reason"],
                                       registry=r)
        self.etcd_up = Gauge("evstore_etcd_up", "1 when etcd answers", registry=r)
        self.etcd_request_latency = Histogram("evstore_etcd_request_duration_seconds",
                                              "Duration of one etcd request (one endpoint tried)",
                                              buckets=LATENCY_BUCKETS, registry=r)
        self.etcd_lease_renewal_failures = Counter("evstore_etcd_lease_renewal_failures",
                                                   "Member lease keepalives that etcd did not answer or refused",
                                                   registry=r)
        self.leader_records_rejected = Counter("evstore_leader_records_rejected",
                                               "Leader records in etcd ignored because they did not verify",
                                               ["reason"], registry=r)
        self.peer_auth_rejected = Counter("evstore_peer_auth_rejected",
                                          "Peer requests (and peer replies) refused because they did not verify",
                                          ["reason"], registry=r)
        # subscriptions
        self.subscribers = Gauge("evstore_subscribers", "Connected transient subscribers", registry=r)
        self.subscription_delivery_latency = Histogram(
            "evstore_subscription_delivery_latency_seconds",
            "Commit (the events' created time) to sent, per group commit delivered live to a transient subscriber",
            buckets=LATENCY_BUCKETS, registry=r)
        self.subscriber_overflows = Counter("evstore_subscriber_overflows",
                                            "Transient subscribers whose live buffer overflowed (they read back "
                                            "from the log)", registry=r)
        self.subscription_lag = Gauge("evstore_subscription_lag", "Events a persistent subscription is behind",
                                      ["subscription"], registry=r)
        self._http_children: dict[tuple[str, str, int, bool], tuple] = {}
        self.subscription_parked = Gauge("evstore_subscription_parked", "Parked events of a persistent subscription",
                                         ["subscription"], registry=r)
        self.subscription_in_flight = Gauge("evstore_subscription_in_flight",
                                            "Events of a persistent subscription delivered and not yet acked",
                                            ["subscription"], registry=r)
        self.subscription_consumers = Gauge("evstore_subscription_consumers",
                                            "Consumers connected to a persistent subscription", ["subscription"],
                                            registry=r)
        self.subscription_redeliveries = Counter("evstore_subscription_redeliveries",
                                                 "Events of a persistent subscription delivered again (nack retry, "
                                                 "ack timeout, consumer gone)", ["subscription"], registry=r)

        # the process (CPU, memory, open files), the interpreter and its garbage collector, in this registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        for result in APPEND_RESULTS:
            self.appends.labels(result=result)
        for kind in READ_KINDS:
            self.events_read.labels(kind=kind)
            self.read_latency.labels(kind=kind)
        for reason in GOSSIP_REJECTIONS:
            self.gossip_rejected.labels(reason=reason)
        for reason in PEER_AUTH_REJECTIONS:
            self.peer_auth_rejected.labels(reason=reason)

    def precreate_http(self, routes: Iterable[tuple[str, str]]) -> None:
        """Create at zero the request counts of every public (method, route) for the statuses panels and
        alerts select; internal routes (peers, scrapes, probes) and latencies appear when used."""
        for method, route in routes:
            if method == "HEAD" or route.startswith(INTERNAL_ROUTE_PREFIXES):
                continue
            for status in PRECREATED_STATUSES:
                self.http_requests.labels(method=method, route=route, status=status, forwarded="false")

    def observe_http(self, method: str, route: str, status: int, seconds: float, *, forwarded: bool = False
                     ) -> None:
        key = (method, route, status, forwarded)
        children = self._http_children.get(key)
        if children is None:  # label lookups cost a lock and a tuple each: keep the children
            flag = "true" if forwarded else "false"
            children = (self.http_requests.labels(method=method, route=route, status=str(status), forwarded=flag),
                        self.http_latency.labels(method=method, route=route, forwarded=flag))
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def read_ahead_judged(self, held: bool) -> None:
        self._read_ahead_children[held].inc()

    def checksum_failed(self, path: str, count: int = 1) -> None:
        self._checksum_children[path].inc(count)

    def set_role(self, *, leader: bool, epoch: int, isr_size: int) -> None:
        self.leader.set(1 if leader else 0)
        self.epoch.set(epoch)
        self.isr_size.set(isr_size)
        if epoch != self._epoch_seen:
            self._epoch_seen = epoch
            self.leader_changed.set(time.time())
