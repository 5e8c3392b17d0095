"""Persistent subscriptions on a real 3-node cluster (real etcd, real node processes on loopback): every HTTP
call works through a follower (sent to the leader), a WebSocket on a follower is relayed to the leader, and
after SIGKILL of the leader (twice, under load) the consumers reconnect and delivery resumes on the new leader
with nothing skipped (KurrentDB #3535, #1301), each stream in order within each connection, and redeliveries
only of events after the last checkpoint the followers had seen."""
from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field

import aiohttp
import pytest

from evstore.client.harness.localcluster import LocalCluster

LEASE_TTL = 3
STREAMS = 5
CONSUMERS = 3
TOTAL = 300  # events appended while the leader is killed (twice)
KILLS = 2
WAIT = 60.0  # bound on the whole delivery after the failover
RECONNECT_PAUSE = 0.2  # a consumer's pause before it connects again (bounded backoff, not a synchronisation)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster(tmp_path):
    nodes = LocalCluster(tmp_path / "cluster", nodes=3, lease_ttl=LEASE_TTL,
                         store_id=f"persist-{uuid.uuid4().hex[:8]}")
    try:
        nodes.start()
        nodes.wait_leader(30)
        yield nodes
    finally:
        nodes.stop()


@dataclass
class Received:
    deliveries: list[tuple[int, dict]] = field(default_factory=list)  # (connection number, delivery)
    acked: set[str] = field(default_factory=set)  # event ids
    connections: int = 0
    not_leader_replies: int = 0
    grown: asyncio.Event = field(default_factory=asyncio.Event)


async def consume(session: aiohttp.ClientSession, urls: list[str], name: str, start: int, received: Received,
                  stop: asyncio.Event) -> None:
    """A consumer as a client library would write it: connect anywhere, follow `not_leader` to the leader,
    on any failure try the next node; ack everything at once."""
    target = urls[start % len(urls)]
    turn = start
    while not stop.is_set():
        follow = None
        try:
            async with session.ws_connect(f"{target}/v1/subscriptions/{name}/connect", heartbeat=2) as ws:
                received.connections += 1
                connection = received.connections
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    body = json.loads(message.data)
                    if "events" in body:
                        for delivery in body["events"]:
                            received.deliveries.append((connection, delivery))
                        await ws.send_json({"ack": [d["deliveryId"] for d in body["events"]]})
                        received.acked.update(d["event"]["id"] for d in body["events"])
                        received.grown.set()
                    elif body.get("error") == "not_leader":
                        received.not_leader_replies += 1
                        follow = (body.get("leader") or {}).get("url")
                        break
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            pass
        if follow:
            target = follow
        else:
            turn += 1
            target = urls[turn % len(urls)]
        await asyncio.sleep(RECONNECT_PAUSE)


async def append_all(session: aiohttp.ClientSession, urls: list[str], prefix: str, count: int, first: int,
                     appended: list[str], alive: list[int]) -> None:
    """Sequential appends through the live nodes; a failed one is sent again with the same event id (so it
    is written once), for a bounded time."""
    for n in range(first, first + count):
        event_id = str(uuid.uuid4())
        body = {"events": [{"id": event_id, "type": "Counted", "data": {"n": n}}]}
        deadline = asyncio.get_running_loop().time() + WAIT
        turn = n
        while True:
            url = urls[alive[turn % len(alive)]]
            try:
                async with session.post(f"{url}/v1/streams/{prefix}-{n % STREAMS}", json=body,
                                        timeout=aiohttp.ClientTimeout(total=15)) as reply:
                    if reply.status == 200:
                        appended.append(event_id)
                        break
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            assert asyncio.get_running_loop().time() < deadline, f"append {n} never succeeded"
            turn += 1
            await asyncio.sleep(RECONNECT_PAUSE)


async def wait_acked(received: Received, ids: list[str], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not set(ids) <= received.acked:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"{what}: {len(set(ids) - received.acked)} of {len(ids)} events never acked"
        received.grown.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(received.grown.wait(), min(remaining, 1.0))


async def wait_count(received: Received, count: int, load: asyncio.Task) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while len(received.acked) < count:
        if load.done():
            load.result()  # re-raises the appender's failure
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"only {len(received.acked)} of {count} events acked"
        received.grown.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(received.grown.wait(), min(remaining, 1.0))


async def last_checkpoint(session, url: str, name: str) -> int:
    status, page = await get(session, f"{url}/v1/streams/$sub-{name}-checkpoint?direction=backward&limit=1")
    return page["events"][0]["data"]["checkpoint"] if status == 200 and page["events"] else 0


async def wait_full_isr(session, cluster) -> None:
    """The restarted node is back in the ISR (so the next kill leaves a quorum); polled: it is state in
    other processes."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        leader, _epoch = await cluster.wait_leader_async(30)
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
            status, view = await get(session, f"{cluster.urls[leader]}/v1/cluster")
            if status == 200 and len(view["isr"]) == 3:
                return
        assert asyncio.get_running_loop().time() < deadline, "the restarted node never rejoined the ISR"
        await asyncio.sleep(0.2)


async def wait_info(session, url: str, name: str, predicate) -> dict:
    """Delivery state lives in the leader's process: poll its info through `url` (bounded)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        status, info = await get(session, f"{url}/v1/subscriptions/{name}")
        if status == 200 and predicate(info):
            return info
        assert asyncio.get_running_loop().time() < deadline, info
        await asyncio.sleep(0.1)


async def get(session, url: str) -> tuple[int, dict]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=15)) as reply:
        return reply.status, await reply.json(content_type=None)


async def test_consumers_follow_the_leader_through_a_failover_and_nothing_is_skipped(cluster):
    leader, _epoch = cluster.wait_leader(30)
    followers = [i for i in range(3) if i != leader]
    urls = cluster.urls
    name, prefix = f"fo-{uuid.uuid4().hex[:8]}", f"fo{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        follower_url = urls[followers[0]]
        settings = {"filter": {"streamPrefix": prefix}, "startFrom": "start", "partitionBy": "stream",
                    "concurrencyLimit": CONSUMERS, "bufferSize": 20, "checkpointAfterEvents": 10}
        async with session.put(f"{follower_url}/v1/subscriptions/{name}", json=settings) as reply:
            assert reply.status == 201, await reply.text()  # sent on to the leader
        status, info = await get(session, f"{follower_url}/v1/subscriptions/{name}")
        assert (status, info["partitionBy"], info["concurrencyLimit"]) == (200, "stream", CONSUMERS)
        # a WebSocket on a follower is relayed to the leader, both ways
        async with session.ws_connect(f"{follower_url}/v1/subscriptions/{name}/connect") as ws:
            async with session.post(f"{follower_url}/v1/streams/{prefix}-probe",
                                    json={"events": [{"type": "Probe", "data": {}}]}) as reply:
                assert reply.status == 200
            (probe,) = (await ws.receive_json(timeout=10))["events"]
            assert probe["event"]["type"] == "Probe"
            await ws.send_json({"ack": [probe["deliveryId"]]})
            await wait_info(session, follower_url, name, lambda i: i["consumers"] == 1 and i["inFlight"] == 0)
        await wait_info(session, follower_url, name, lambda i: i["consumers"] == 0)
        # a connection relayed once already is not relayed again: it is told where the leader is
        async with session.ws_connect(f"{follower_url}/v1/subscriptions/{name}/connect",
                                      headers={"X-Evstore-Forwarded": "elsewhere"}) as ws:
            told = await ws.receive_json(timeout=10)
            assert told["error"] == "not_leader" and told["leader"]["url"] == urls[leader]
            assert (await ws.receive(timeout=10)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4001

        received = Received()
        stop = asyncio.Event()
        consumers = [asyncio.create_task(consume(session, urls, name, i, received, stop)) for i in range(CONSUMERS)]
        appended: list[str] = []
        alive = [0, 1, 2]
        load = asyncio.create_task(append_all(session, urls, prefix, TOTAL, 0, appended, alive))
        checkpoints_seen, connections_at_kill = [], []
        try:
            for kill in range(KILLS):
                await wait_count(received, (kill + 1) * TOTAL // (KILLS + 2), load)
                leader, _epoch = await cluster.wait_leader_async(30)
                others = [i for i in range(3) if i != leader]
                # the checkpoint the followers have seen committed: nothing at or below it may come again
                checkpoints_seen.append(await last_checkpoint(session, urls[others[0]], name))
                connections_at_kill.append(received.connections)
                alive[:] = others
                cluster.node(leader).kill()  # SIGKILL, under load, with events in flight
                await cluster.wait_leader_async(30, exclude=(leader,))
                cluster.node(leader).restart(wait=False)  # it comes back as a follower for the next round
                alive[:] = [0, 1, 2] if kill + 1 < KILLS else others
                await asyncio.to_thread(cluster.node(leader).wait_ready)
                await wait_full_isr(session, cluster)
            await asyncio.wait_for(load, WAIT)
            await wait_acked(received, appended, "after the failovers")
        finally:
            stop.set()
            load.cancel()
            for task in consumers:
                task.cancel()
            await asyncio.gather(load, *consumers, return_exceptions=True)
    by_id: dict[str, list[tuple[int, dict]]] = {}
    for connection, delivery in received.deliveries:
        by_id.setdefault(delivery["event"]["id"], []).append((connection, delivery))
    assert set(appended) <= set(by_id), "an acknowledged append was never delivered"
    # each stream in order within each connection
    sequences: dict[tuple[int, str], list[int]] = {}
    for connection, delivery in received.deliveries:
        sequences.setdefault((connection, delivery["event"]["stream"]), []).append(delivery["event"]["version"])
    for (connection, stream), seq in sequences.items():
        assert seq == sorted(seq) and len(seq) == len(set(seq)), (connection, stream, seq)
    # a redelivery on a connection made after a kill is of an event after the checkpoint seen before that kill
    redelivered = 0
    for deliveries in by_id.values():
        for connection, delivery in deliveries[1:]:
            redelivered += 1
            kills_before = [k for k, at in enumerate(connections_at_kill) if at < connection]
            if kills_before:
                assert delivery["event"]["position"] > checkpoints_seen[kills_before[-1]], (
                    delivery, checkpoints_seen, connections_at_kill)
    assert received.connections > CONSUMERS  # they did reconnect
    print(f"{len(appended)} events, {len(received.deliveries)} deliveries, {redelivered} redelivered, "
          f"{received.connections} connections, checkpoints seen before the kills {checkpoints_seen}")


async def test_http_consumers_work_through_a_follower_and_a_stopping_follower_closes_its_relays(cluster):
    leader, _epoch = cluster.wait_leader(30)
    follower = next(i for i in range(3) if i != leader)
    url, name = cluster.urls[follower], f"relay-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.put(f"{url}/v1/subscriptions/{name}", json={"stream": "relayed"}) as reply:
            assert reply.status == 201
        async with session.post(f"{url}/v1/streams/relayed", json={"events": [{"type": "T", "data": {}}]}) as reply:
            assert reply.status == 200
        async with session.post(f"{url}/v1/subscriptions/{name}/fetch?max=5&wait=5") as reply:
            (delivery,) = (await reply.json())["events"]  # fetched from the leader through the follower
        async with session.post(f"{url}/v1/subscriptions/{name}/ack", json={"ids": [delivery["deliveryId"]]}) as reply:
            assert await reply.json() == {"acked": 1, "unknown": []}
        await wait_info(session, url, name, lambda i: i["checkpoint"] == 1 and i["inFlight"] == 0)
        async with session.ws_connect(f"{url}/v1/subscriptions/{name}/connect") as ws:
            await wait_info(session, url, name, lambda i: i["consumers"] == 1)
            stopping = asyncio.get_running_loop().run_in_executor(None, cluster.node(follower).terminate)
            assert (await ws.receive(timeout=10)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1001
            assert await stopping == 0  # a clean exit, without waiting for the consumer to go
        await wait_info(session, cluster.urls[leader], name, lambda i: i["consumers"] == 0)
