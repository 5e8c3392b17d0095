"""When a write cannot be made safe it is refused with 503 and leaves no trace: too few in-sync replicas,
or no leader at all."""
from __future__ import annotations

import urllib.error
import urllib.request

from clusterhttp import call, wait_for
from evstore.client.harness.localcluster import LocalCluster
from evstore.client.harness.localnode import NodeProcess, free_port






def test_too_few_in_sync_replicas_refuse_writes_and_leave_no_trace(tmp_path):
    cluster = LocalCluster(tmp_path / "store", nodes=3, lease_ttl=3)
    try:
        cluster.start()
        leader, _epoch = cluster.wait_leader(30)
        url = cluster.urls[leader]
        wait_for(lambda: len(call(url + "/v1/cluster")[1]["isr"]) == 3, 30, "a full ISR")
        assert call(url + "/v1/streams/before", "POST", {"events": [{"type": "T", "data": {}}]})[0] == 200
        followers = [i for i in range(3) if i != leader]
        for i in followers:
            cluster.node(i).kill()
        _, before = call(url + "/v1/cluster")

        def refusing():  # a probe admitted before the leader noticed may time out instead, and may commit later
            status, error = call(url + "/v1/streams/probe", "POST", {"events": [{"type": "T", "data": {}}]})
            assert status == 503, "a write was acknowledged with both followers dead"
            return error["reason"] == "not_enough_replicas"

        wait_for(refusing, 60, "writes refused at once for too few caught-up in-sync replicas")
        status, error = call(url + "/v1/streams/refused", "POST", {"events": [{"type": "T", "data": {}}]})
        assert status == 503 and error["reason"] == "not_enough_replicas", error
        # the ISR never shrinks below minInSync (the dead stay eligible), and the leader stays: nobody live could
        # do better, so it does not flap
        _, after = call(url + "/v1/cluster")
        assert len(after["isr"]) >= after["minInSync"] and after["role"] == "leader", after
        assert after["epoch"] == before["epoch"], (before, after)

        for i in followers:
            cluster.node(i).start()
        wait_for(lambda: len(call(url + "/v1/cluster")[1]["isr"]) == 3, 30, "the followers to rejoin")
        for node_url in cluster.urls:
            assert call(node_url + "/v1/streams/refused")[0] == 404
            assert call(node_url + "/v1/streams/before")[0] == 200
    finally:
        cluster.stop()


def test_a_node_without_a_leader_answers_503(tmp_path):
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there: etcd is down
    data = tmp_path / "alone" / "data"
    data.mkdir(parents=True)
    node = NodeProcess(data, args=("--node-id", "alone", "--etcd-endpoints", unreachable,
                                   "--cluster-secret", "s" * 20, "--lease-ttl", "2"))
    try:
        node.start(wait=False)
        wait_for(lambda: _answers(node.url), 30, "the node to answer")
        status, ready = call(node.url + "/health/ready")
        assert status == 503 and ready["error"] == "unavailable"
        status, error = call(node.url + "/v1/streams/s", "POST", {"events": [{"type": "T", "data": {}}]})
        assert status == 503 and error["reason"] == "no_leader", error
        assert call(node.url + "/v1/cluster")[1]["role"] == "candidate"
        assert call(node.url + "/health/live")[0] == 200
    finally:
        node.stop()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/health/live", timeout=1).close()
        return True
    except (urllib.error.URLError, OSError):
        return False
