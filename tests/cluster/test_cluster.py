"""A real 3-node cluster (real etcd, real node processes on loopback): formation, any node serves, the
cluster view, metrics. The fault tests are in test_faults.py."""
from __future__ import annotations

import urllib.request
import uuid

import pytest
from openapi_schema_validator import OAS30Validator

from clusterhttp import call, wait_for
from evstore.client.harness.localcluster import LocalCluster
from evstore.node.api.openapi import document


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=3, lease_ttl=3)
    try:
        nodes.start()
        nodes.wait_leader(30)
        yield nodes
    finally:
        nodes.stop()




def roles(cluster: LocalCluster) -> tuple[int, list[int]]:
    leader, _epoch = cluster.wait_leader(30)
    return leader, [i for i in range(3) if i != leader]




def test_one_leader_the_others_follow_and_all_join_the_isr(cluster):
    leader, followers = roles(cluster)
    views = wait_for(lambda: (v := [call(u + "/v1/cluster")[1] for u in cluster.urls])
                     and len(v[leader]["isr"]) == 3 and v, what="a full ISR")
    schema = document()
    validator = OAS30Validator({"$ref": "#/components/schemas/Cluster", "components": schema["components"]})
    for i, view in enumerate(views):
        validator.validate(view)
        assert view["role"] == ("leader" if i == leader else "follower")
        assert view["leader"]["node"] == cluster.node_id(leader)
        assert view["epoch"] == views[leader]["epoch"] > 0
    assert views[leader]["isr"] == sorted(cluster.node_id(i) for i in range(3))
    assert views[leader]["minInSync"] == 2
    members = {m["node"]: m for m in views[leader]["members"]}
    assert set(members) == {cluster.node_id(i) for i in range(3)}
    for i in followers:
        assert call(cluster.urls[i] + "/health/ready") == (200, {"status": "ready", "role": "follower"})
    assert call(cluster.urls[leader] + "/v1/info")[1]["mode"] == "cluster"


def test_a_follower_forwards_writes_and_reads_its_own_writes(cluster):
    _leader, followers = roles(cluster)
    stream = f"order-{uuid.uuid4().hex[:8]}"
    event_id = str(uuid.uuid4())
    body = {"expectedVersion": "no_stream", "events": [{"id": event_id, "type": "Placed", "data": {"n": 1}}]}
    status, reply = call(f"{cluster.urls[followers[0]]}/v1/streams/{stream}", "POST", body)
    assert status == 200 and reply["version"] == 1
    # the reply waited until this follower shows the event
    status, page = call(f"{cluster.urls[followers[0]]}/v1/streams/{stream}")
    assert status == 200 and [e["id"] for e in page["events"]] == [event_id]
    # the other follower, asked for the leader's view, forwards the read
    status, page = call(f"{cluster.urls[followers[1]]}/v1/streams/{stream}?consistency=leader")
    assert status == 200 and page["version"] == 1
    # a retry through another node returns the original reply and writes nothing
    assert call(f"{cluster.urls[followers[1]]}/v1/streams/{stream}", "POST", body) == (200, reply)
    # a wrong expected version is answered by the leader, through the follower
    status, error = call(f"{cluster.urls[followers[1]]}/v1/streams/{stream}", "POST",
                         {"expectedVersion": 5, "events": [{"type": "Placed", "data": {}}]})
    assert status == 409 and error["error"] == "wrong_expected_version" and error["currentVersion"] == 1


def test_a_409_through_a_follower_names_a_version_that_follower_shows(cluster):
    """Concurrent writers race for the same streams through every node; right after each 409 the node that
    answered it is read: it must show the version the 409 names (it did not, now and then, under load)."""
    import random
    import threading

    streams = [f"race-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    stale: list = []
    conflicts = [0]

    def writer(seed: int) -> None:
        chance = random.Random(seed)
        for _ in range(40):
            url, stream = chance.choice(cluster.urls), chance.choice(streams)
            status, page = call(f"{url}/v1/streams/{stream}?direction=backward&limit=1")
            version = page.get("version", 0) if status == 200 else 0
            status, reply = call(f"{url}/v1/streams/{stream}", "POST",
                                 {"expectedVersion": version, "events": [{"type": "T"}]})
            if status == 409:
                conflicts[0] += 1
                _s, now = call(f"{url}/v1/streams/{stream}?direction=backward&limit=1")
                if now.get("version", 0) < reply["currentVersion"]:
                    stale.append((url, reply["currentVersion"], now.get("version")))

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert conflicts[0] > 0, "no conflict happened: the test raced nothing"
    assert not stale, stale


def test_bad_input_is_rejected_on_a_follower_too(cluster):
    _leader, followers = roles(cluster)
    url = cluster.urls[followers[0]]
    assert call(f"{url}/v1/streams/x?consistency=maybe")[0] == 400
    status, error = call(f"{url}/v1/streams/$system", "POST", {"events": [{"type": "T", "data": {}}]})
    assert status == 400 and error["error"] == "reserved_stream"


def test_every_node_holds_the_same_log(cluster):
    leader, followers = roles(cluster)
    for i in range(20):
        assert call(f"{cluster.urls[i % 3]}/v1/streams/same-{i % 4}", "POST",
                    {"events": [{"type": "T", "data": {"i": i}}]})[0] == 200
    head = call(f"{cluster.urls[leader]}/v1/all?limit=1&direction=backward")[1]["head"]

    def pages():
        found = [call(f"{u}/v1/all?limit=4096")[1] for u in cluster.urls]
        return found if all(p["head"] == head for p in found) else None

    found = wait_for(pages, what="followers to apply the whole log")
    ids = [[(e["position"], e["id"], e["stream"], e["version"]) for e in p["events"]] for p in found]
    assert ids[0] == ids[1] == ids[2]
    assert [p for p, *_ in ids[0]] == list(range(1, head + 1))


def test_cluster_metrics(cluster):
    leader, followers = roles(cluster)

    def gauge(i: int, name: str) -> float:
        with urllib.request.urlopen(cluster.urls[i] + "/metrics", timeout=10) as r:
            text = r.read().decode()
        values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
        return values[0] if values else float("nan")

    assert gauge(leader, "evstore_leader") == 1
    assert all(gauge(i, "evstore_leader") == 0 for i in followers)
    wait_for(lambda: gauge(leader, "evstore_isr_size") == 3 and gauge(leader, "evstore_members") == 3,
             what="a full ISR and member list in the metrics")
    assert gauge(leader, "evstore_epoch") > 0
    assert all(gauge(i, "evstore_etcd_up") == 1 for i in range(3))
    assert gauge(leader, "evstore_elections_total") >= 1
    # zeroconf on 127.0.0.1 finds the two others (etcd lists them too: the metric counts distinct peers)
    wait_for(lambda: all(gauge(i, "evstore_gossip_peers") == 2 for i in range(3)), what="gossip peers")
    with urllib.request.urlopen(cluster.urls[leader] + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for i in followers:
        assert f'evstore_replication_lag_events{{follower="{cluster.node_id(i)}"}}' in text


def test_every_node_knows_every_members_position(cluster):
    leader, followers = roles(cluster)

    def positions_everywhere():
        views = [call(u + "/v1/cluster")[1] for u in cluster.urls]
        return all(m["position"] is not None for v in views for m in v["members"]) and views

    views = wait_for(positions_everywhere, what="every member's position on every node")
    for view in views:
        assert {m["node"] for m in view["members"]} == {cluster.node_id(i) for i in range(3)}


def test_a_step_down_sent_through_a_follower_is_answered_with_the_new_leader(cluster):
    """Sent through the follower that takes over, the request meets the leader change it asked for: that was
    answered 503 "outcome unknown: retry it", and a retry hands leadership away a second time."""
    for _ in range(4):
        leader, followers = roles(cluster)
        wait_for(lambda: len(call(cluster.urls[leader] + "/v1/cluster")[1].get("isr", [])) == 3, timeout=30,
                 what="a full ISR")
        status, reply = call(cluster.urls[followers[0]] + "/v1/cluster/step-down", "POST")
        assert status == 200 and reply["stepDown"] is True, reply
        assert reply["leader"] != cluster.node_id(leader), reply
        wait_for(lambda: cluster.wait_leader(30)[0] != leader, timeout=30, what="the new leader")

