"""Scaling with real processes and a real etcd: a single node's log becomes the starting point of a
cluster (restarted clustered, then empty nodes join and copy it), and the in-sync replicas a write
needs come from a file the node re-reads (the operator's ConfigMap), so a lone first pod of a
3-replica store refuses writes instead of acknowledging them alone."""
from __future__ import annotations

import uuid

from clusterhttp import call, wait_for
from evstore.client.harness.localnode import NodeProcess, free_port

SECRET = "scaling-cluster-secret-0123456789"


def clustered(proc: NodeProcess, *, node_id: str, store: str, etcd_url: str, in_sync_file) -> NodeProcess:
    proc.args = ("--node-id", node_id, "--store-id", store, "--etcd-endpoints", etcd_url,
                 "--cluster-secret", SECRET, "--discovery", "etcd", "--lease-ttl", "3",
                 "--advertise-url", proc.url, "--min-in-sync-file", str(in_sync_file))
    return proc


def stream_events(url: str, stream: str) -> list[tuple[int, str]]:
    status, page = call(f"{url}/v1/streams/{stream}?limit=1000")
    assert status == 200, page
    return [(e["position"], e["id"]) for e in page["events"]]


def append(url: str, stream: str, n: int) -> tuple[int, dict]:
    return call(f"{url}/v1/streams/{stream}", "POST",
                {"events": [{"id": str(uuid.uuid4()), "type": "Counted", "data": {"n": n}}]})


def cluster_view(url: str) -> dict:
    return call(f"{url}/v1/cluster")[1]


def test_a_single_nodes_log_is_the_start_of_the_cluster_it_grows_into(tmp_path, etcd):
    store, stream = "grow", "counter-1"
    in_sync = tmp_path / "min-in-sync"
    in_sync.write_text("1\n")
    first = NodeProcess(tmp_path / "n0", port=free_port(), args=("--node-id", "n0", "--store-id", store))
    (tmp_path / "n0").mkdir()
    first.start()
    for n in range(20):
        assert append(first.url, stream, n)[0] == 200
    single = stream_events(first.url, stream)
    first.stop()

    # Restarted clustered on the same data: it leads an epoch > 0 over its epoch-0 entries.
    clustered(first, node_id="n0", store=store, etcd_url=etcd.client_url, in_sync_file=in_sync).start()
    view = wait_for(lambda: (v := cluster_view(first.url)).get("role") == "leader" and v, 30, "n0 leading")
    assert view["epoch"] > 0 and view["minInSync"] == 1
    assert stream_events(first.url, stream) == single
    acked = []
    status, reply = append(first.url, stream, 20)
    assert status == 200, reply
    acked.append(reply["position"])

    joiners = []
    for name in ("n1", "n2"):
        (tmp_path / name).mkdir()
        proc = NodeProcess(tmp_path / name, port=free_port())
        joiners.append(clustered(proc, node_id=name, store=store, etcd_url=etcd.client_url,
                                 in_sync_file=in_sync).start(wait=False))
    # Writes go on while the empty nodes copy the log; each is acknowledged once, by n0.
    for n in range(21, 41):
        status, reply = append(first.url, stream, n)
        assert status == 200, reply
        acked.append(reply["position"])
    assert len(set(acked)) == len(acked)
    for proc in joiners:
        proc.wait_ready(timeout=60)
    wait_for(lambda: len(cluster_view(first.url).get("isr") or ()) == 3, 60, "a full ISR")
    # The operator raises minInSync once the new replicas caught up: the leader re-reads the file.
    in_sync.write_text("2\n")
    wait_for(lambda: cluster_view(first.url).get("minInSync") == 2, 20, "minInSync 2 from the file")
    status, reply = append(joiners[0].url, stream, 41)  # forwarded to the leader
    assert status == 200, reply
    expected = wait_for(lambda: (e := stream_events(first.url, stream)) and len(e) == 42 and e, 20, "42 events")
    assert expected[:20] == single
    for proc in joiners:
        wait_for(lambda: stream_events(proc.url, stream) == expected, 30, f"every event on {proc.url}")
    views = [cluster_view(u) for u in (first.url, *(p.url for p in joiners))]
    assert [v["role"] for v in views] == ["leader", "follower", "follower"]
    assert {v["leader"]["node"] for v in views} == {"n0"}
    for proc in (*joiners, first):
        proc.stop()


def test_a_lone_first_node_of_a_three_replica_store_refuses_writes_and_writes_nothing(tmp_path, etcd):
    in_sync = tmp_path / "min-in-sync"
    in_sync.write_text("2\n")
    (tmp_path / "n0").mkdir()
    proc = NodeProcess(tmp_path / "n0", port=free_port())
    clustered(proc, node_id="n0", store="lone", etcd_url=etcd.client_url, in_sync_file=in_sync).start()
    view = wait_for(lambda: (v := cluster_view(proc.url)).get("role") == "leader" and v, 30, "n0 leading")
    assert view["minInSync"] == 2
    status, reply = append(proc.url, "order-1", 1)
    assert status == 503 and reply.get("reason") == "not_enough_replicas", reply
    # Nothing was written: the log's head (this node's position) is still 0.
    view = cluster_view(proc.url)
    me = next(m for m in view["members"] if m["node"] == "n0")
    assert (me["position"], view["committedPosition"]) == (0, 0), view
    proc.stop()


def test_the_min_in_sync_file_is_validated_at_start_and_an_invalid_update_keeps_the_last_value(tmp_path):
    import pytest

    from evstore.node.cluster.insync import MinInSyncFile
    from evstore.node.config import ConfigError, load_settings

    path = tmp_path / "min-in-sync"
    path.write_text("0\n")
    with pytest.raises(ConfigError, match="EVSTORE_MIN_IN_SYNC_FILE.*integer from 1 to 9"):
        load_settings([], {"EVSTORE_MIN_IN_SYNC_FILE": str(path)})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(["--min-in-sync-file", str(tmp_path / "absent")], {})
    path.write_text("2")
    with pytest.raises(ConfigError, match="not both"):
        load_settings(["--min-in-sync-file", str(path), "--min-in-sync", "1"], {})
    assert load_settings(["--min-in-sync-file", str(path)], {}).min_in_sync_file == path
    target = MinInSyncFile(path)
    path.write_text("three")
    assert target.refresh() == 2
    path.write_text("3\n")
    assert target.refresh() == 3 and target.value == 3
