"""Scavenge on a real 3-node cluster: it is a log entry that every node applies as of that entry's position,
so all copies remove the same events and stay identical; retries of scavenged appends stay idempotent."""
from __future__ import annotations

import uuid

import pytest

from clusterhttp import call, wait_for
from evstore.client.harness.localcluster import LocalCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = LocalCluster(tmp_path_factory.mktemp("scavenge"), nodes=3, lease_ttl=3)
    try:
        nodes.start()
        nodes.wait_leader(30)
        yield nodes
    finally:
        nodes.stop()


def test_a_scavenge_removes_the_same_events_on_every_node(cluster):
    leader, _epoch = cluster.wait_leader(30)
    follower = (leader + 1) % 3
    url = cluster.urls[leader]
    events = [{"id": str(uuid.uuid4()), "type": "T", "data": {"i": i}} for i in range(5)]
    first = call(f"{url}/v1/streams/kept-2", "POST", {"events": events})
    assert first[0] == 200, first
    assert call(f"{url}/v1/streams/other", "POST", {"events": [{"type": "T", "data": {}}]})[0] == 200
    assert call(f"{url}/v1/streams/kept-2/metadata", "PUT", {"maxCount": 2})[0] == 200

    status, reply = call(f"{cluster.urls[follower]}/v1/admin/scavenge", "POST")  # forwarded to the leader
    assert status == 200, reply
    assert reply["removed"] == 3
    head = call(f"{url}/v1/all?limit=1&direction=backward")[1]["head"]

    def copies():
        pages = [call(f"{u}/v1/all?limit=4096")[1] for u in cluster.urls]
        if any(p.get("head") != head for p in pages):
            return None
        found = [[(e["position"], e["id"]) for e in p["events"]] for p in pages]
        return found if found[0] == found[1] == found[2] else None

    found = wait_for(copies, what="every node to apply the scavenge")
    ids = {event_id for _, event_id in found[0]}
    assert [e["id"] in ids for e in events] == [False, False, False, True, True]
    for u in cluster.urls:
        page = call(f"{u}/v1/streams/kept-2")[1]
        assert [e["version"] for e in page["events"]] == [4, 5]
    again = call(f"{url}/v1/streams/kept-2", "POST", {"events": events})  # a retry of scavenged events
    assert again == first
