"""Transient subscriptions on a real 3-node cluster: each follower serves them from its committed log, and a
subscriber on a follower sees the whole log exactly once, in order, across a SIGKILL of the leader."""
from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import pytest

from evstore.client.harness.localcluster import LocalCluster
from subhelpers import positions, sse, websocket

LEASE_TTL = 3
LEADER_WAIT = 30.0
WAIT = 60.0
APPENDS = 120
KILL_AFTER = 40


@pytest.fixture
def cluster(tmp_path):
    nodes = LocalCluster(tmp_path / "cluster", nodes=3, lease_ttl=LEASE_TTL, store_id=f"sub-{uuid.uuid4().hex[:8]}")
    try:
        nodes.start()
        nodes.wait_leader(LEADER_WAIT)
        yield nodes
    finally:
        nodes.stop()


async def append_until_acknowledged(http: aiohttp.ClientSession, cluster: LocalCluster, stream: str,
                                    events: list[dict]) -> dict:
    """Retries (same event ids, so at most once in the log) through any live node until acknowledged."""
    deadline = asyncio.get_running_loop().time() + WAIT
    attempt = 0
    while True:
        url = cluster.urls[cluster.live()[attempt % len(cluster.live())]]
        attempt += 1
        try:
            async with http.post(f"{url}/v1/streams/{stream}", json={"events": events},
                                 timeout=aiohttp.ClientTimeout(total=15)) as resp:
                if resp.status == 200:
                    return await resp.json()
                assert resp.status == 503, await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        assert asyncio.get_running_loop().time() < deadline, "no append acknowledged for a minute"
        await asyncio.sleep(0.2)


async def test_subscribers_on_followers_see_every_event_once_across_a_leader_kill(cluster):
    leader, _epoch = cluster.wait_leader(LEADER_WAIT)
    followers = [i for i in range(3) if i != leader]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=WAIT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        acknowledged: list[str] = []

        async def writer() -> None:
            for n in range(APPENDS):
                if n == KILL_AFTER:
                    await asyncio.to_thread(cluster.node(leader).kill)
                ids = [str(uuid.uuid4()) for _ in range(1 + n % 3)]
                await append_until_acknowledged(http, cluster, f"sub-{n % 5}",
                                                [{"id": i, "type": "T", "data": {"n": n}} for i in ids])
                acknowledged.extend(ids)

        async def subscribe(index: int, kind: str) -> list[dict]:
            """Everything from the start until this node shows the writer's last event."""
            opener = sse if kind == "sse" else websocket
            got: list[dict] = []
            seen: set[str] = set()
            async with opener(http, cluster.urls[index], {"start": "start", "heartbeat": "1"}) as messages:
                async for kind, _id, data in messages:
                    if kind != "heartbeat":
                        got.append(data)
                    if "event" in data:
                        seen.add(data["event"]["id"])
                    if writing.done() and acknowledged[-1] in seen:
                        return got
            raise AssertionError(f"node {index}'s subscription ended early after {positions(got)[-3:]}")

        writing = asyncio.create_task(writer())
        on_followers = [asyncio.create_task(subscribe(followers[0], "sse")),
                        asyncio.create_task(subscribe(followers[1], "ws"))]
        await asyncio.wait_for(writing, 3 * WAIT)
        new_leader, _ = await cluster.wait_leader_async(LEADER_WAIT, exclude=(leader,))
        results = await asyncio.wait_for(asyncio.gather(*on_followers), WAIT)

        async with http.get(cluster.urls[new_leader] + "/v1/all",
                            params={"limit": "4096", "includeSystem": "true"}) as resp:
            log = (await resp.json())["events"]
    assert sorted(e["id"] for e in log) == sorted(acknowledged)  # each acknowledged append exactly once
    for got in results:
        assert positions(got) == list(range(1, len(log) + 1))  # no gap, no duplicate, in order
        assert [m["event"] for m in got if "event" in m] == log
        assert sum(1 for m in got if "caughtUp" in m) == 1


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_a_leader_delivers_only_what_the_in_sync_replicas_committed(cluster):
    leader, _epoch = cluster.wait_leader(LEADER_WAIT)
    followers = [i for i in range(3) if i != leader]
    url = cluster.urls[leader]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=WAIT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await append_until_acknowledged(http, cluster, "c", [{"type": "T", "data": {}}])
        async with sse(http, url, {"heartbeat": "1"}) as messages:
            _kind, _id, caught_up = await asyncio.wait_for(anext(messages), WAIT)
            assert caught_up == {"caughtUp": True, "position": 1}
            for i in followers:
                cluster.node(i).signal(signal.SIGSTOP)
            try:
                pending = asyncio.create_task(http.post(f"{url}/v1/streams/c", json={"events": [{"type": "T"}]}))
                deadline = asyncio.get_running_loop().time() + WAIT
                while await metric(http, url, "evstore_head_position") < 2:  # durable on the leader only
                    assert asyncio.get_running_loop().time() < deadline, "the leader did not write the append"
                    await asyncio.sleep(0.1)
                heartbeats = 0
                async for kind, _id, data in messages:  # a few heartbeats: nothing uncommitted is sent
                    assert kind == "heartbeat" and data["position"] == 1, data
                    heartbeats += 1
                    if heartbeats == 3:
                        break
                assert await metric(http, url, "evstore_committed_position") == 1
            finally:
                for i in followers:
                    cluster.node(i).signal(signal.SIGCONT)
            async for kind, _id, data in messages:  # committed once the followers have it
                if "event" in data:
                    assert data["event"]["position"] == 2
                    break
            (await pending).release()
