"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process in tests).

Every metric the dashboards use is defined here; tests/unit/test_dashboards.py checks them against
this registry, so define a metric here before a dashboard uses it.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


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
        self.storage_bytes = Gauge("evstore_storage_bytes", "Bytes used by the log on disk", registry=r)
        self.head_position = Gauge("evstore_head_position", "Position of the last event in the log", registry=r)
        self.committed_position = Gauge("evstore_committed_position", "Position of the last committed event",
                                        registry=r)
        self.checksum_failures = Counter("evstore_checksum_failures", "Records whose checksum did not verify",
                                         registry=r)
        # http
        self.http_requests = Counter("evstore_http_requests", "HTTP requests by route and status",
                                     ["method", "route", "status"], registry=r)
        self.http_latency = Histogram("evstore_http_request_duration_seconds", "HTTP request duration", ["route"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        # cluster (a single node reports itself as leader of a one-member set)
        self.leader = Gauge("evstore_leader", "1 when this node is the leader (or a single node)", registry=r)
        self.epoch = Gauge("evstore_epoch", "Leader epoch known to this node", registry=r)
        self.members = Gauge("evstore_members", "Members known to this node", registry=r)
        self.isr_size = Gauge("evstore_isr_size", "Size of the in-sync replica set", registry=r)
        self.replication_lag_events = Gauge("evstore_replication_lag_events", "Events a follower is behind",
                                            ["follower"], registry=r)
        self.replication_lag_seconds = Gauge("evstore_replication_lag_seconds", "Seconds a follower is behind",
                                             ["follower"], registry=r)
        self.elections = Counter("evstore_elections", "Leader elections this node took part in", registry=r)
        self.gossip_peers = Gauge("evstore_gossip_peers", "Peers seen by discovery", registry=r)
        self.gossip_rejected = Counter("evstore_gossip_rejected", "Rejected discovery announcements", ["reason"],
                                       registry=r)
        self.etcd_up = Gauge("evstore_etcd_up", "1 when etcd answers", registry=r)
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
            "Commit (the event's created time) to sent, of events delivered live to transient subscribers",
            buckets=LATENCY_BUCKETS, registry=r)
        self.subscriber_overflows = Counter("evstore_subscriber_overflows",
                                            "Transient subscribers whose live buffer overflowed (they read back "
                                            "from the log)", registry=r)
        self.subscription_lag = Gauge("evstore_subscription_lag", "Events a persistent subscription is behind",
                                      ["subscription"], registry=r)
        self._http_children: dict[tuple[str, str, int], tuple] = {}
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

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._http_children.get(key)
        if children is None:  # label lookups cost a lock and a tuple each: keep the children
            children = (self.http_requests.labels(method=method, route=route, status=str(status)),
                        self.http_latency.labels(route=route))
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
