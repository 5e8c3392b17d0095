"""Partition tests: a 3-node cluster and its etcd, each in its own network namespace on a private bridge
(evstore.client.harness.netns). They need root (namespaces, iptables) and skip with the reason otherwise. The
namespaces are removed whatever happens, and every process is ended by PID."""
from __future__ import annotations

import signal
import uuid

import pytest

from evstore.client.harness.localetcd import EtcdNotFound, etcd_binary
from evstore.client.harness.netns import NetnsCluster, NetnsLab, unavailable_reason
from partitionhelpers import LEADER_WAIT, LEASE_TTL


def pytest_collection_modifyitems(items):
    reason = unavailable_reason()
    if reason is None:
        try:
            etcd_binary()
        except EtcdNotFound as exc:
            reason = str(exc)
    if reason is not None:
        for item in items:
            if "tests/partition" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=f"partition tests: {reason}"))


@pytest.fixture
def lab_cluster(tmp_path):
    """A started 3-node NetnsCluster with an agreed leader, in a lab of its own."""
    lab = NetnsLab(NetnsCluster.hosts(3))
    cluster = None
    try:
        lab.create()
        cluster = NetnsCluster(lab, tmp_path / "cluster", nodes=3, lease_ttl=LEASE_TTL,
                               store_id=f"part-{uuid.uuid4().hex[:8]}")
        cluster.start()
        cluster.wait_leader(LEADER_WAIT)
        yield cluster
    finally:
        try:
            if cluster is not None:
                for node in cluster.nodes:  # a stopped process must not survive a failed test half-frozen
                    node.signal(signal.SIGCONT)
                cluster.stop()
        finally:
            lab.destroy()
