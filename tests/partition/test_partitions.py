"""Faults Jepsen-style (issue 11.5): 3 nodes and etcd each in its own network namespace, 8 clients doing
compare-and-set appends on 3 hot streams through their own node, iptables DROP between chosen hosts, SIGSTOP.
During each fault writes must resume while it lasts (a new leader takes over); after healing every node follows
one leader again; and the checker proves that nothing acknowledged was lost, that every 409 named a committed
version, that consistency=leader reads saw every earlier acknowledged append and that no client's reads through
one node went backwards."""
from __future__ import annotations

import asyncio
import signal
import time
import uuid

import aiohttp
import pytest

from evstore.client.harness.checker import History
from partitionhelpers import LEADER_WAIT, assert_consistent, cas_clients, wait_full_isr, wait_view

pytestmark = pytest.mark.timeout(180)

BEFORE = 30  # acknowledged appends before the fault
DURING = 20  # acknowledged appends while the fault lasts: writes resumed without healing
FAULT_WAIT = 30.0  # bound on writes resuming under a fault (about one lease TTL is expected)
AFTER_WAIT = 60.0


def nodes_but(cluster, index: int) -> list[str]:
    return [cluster.node_id(i) for i in range(cluster.size) if i != index]


async def fault_then_heal(cluster, clients, old: int, hosts_cut: list[str]) -> float:
    """Cut the old leader from `hosts_cut`; writes resume under the fault through a new leader; heal; the old
    leader follows. The longest window with no acknowledged append from the cut to the resumption."""
    lab, name = cluster.lab, cluster.node_id(old)
    await clients.grows(BEFORE, LEADER_WAIT, "before the fault")
    cut_at = time.monotonic()
    lab.isolate(name, hosts_cut)
    print(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} cut {name} from {hosts_cut}")
    try:
        new, _ = await cluster.wait_leader_async(FAULT_WAIT, exclude=(old,))
        assert new != old
        await clients.grows(DURING, FAULT_WAIT, f"while {name} is cut from {hosts_cut}")  # through the new leader
        resumed = time.monotonic()
    finally:
        lab.heal()
    gap = clients.longest_gap(cut_at, resumed)
    print(f"{name} cut from {hosts_cut}: longest window without an acknowledged append {gap:.2f}s")
    leader = await wait_full_isr(cluster, AFTER_WAIT)  # the old leader follows and rejoins the ISR
    assert leader != old
    await clients.grows(DURING, AFTER_WAIT, "after healing")
    return gap


async def test_a_leader_cut_off_from_its_followers_gives_way(lab_cluster):
    """It still reaches etcd. Before issue 11.4 it shrank the ISR to itself and refused writes for the whole
    partition, and the followers, out of the ISR, could not take over."""
    cluster = lab_cluster
    old = await wait_full_isr(cluster)
    async with cas_clients(cluster) as clients:
        await fault_then_heal(cluster, clients, old, nodes_but(cluster, old))
        await assert_consistent(cluster, clients)


async def test_a_leader_cut_off_from_etcd_steps_down_and_answers_at_once(lab_cluster):
    cluster = lab_cluster
    old = await wait_full_isr(cluster)
    name = cluster.node_id(old)
    async with cas_clients(cluster) as clients:
        await clients.grows(BEFORE, LEADER_WAIT, "before the fault")
        cut_at = time.monotonic()
        cluster.lab.cut(name, "etcd")
        try:
            await cluster.wait_leader_async(FAULT_WAIT, exclude=(old,))
            await clients.grows(DURING, FAULT_WAIT, f"while {name} is cut from etcd")  # through the new leader
            resumed = time.monotonic()
            await wait_view(cluster, old, lambda v: v.get("role") != "leader", f"{name} to step down")
            # it cannot learn the election: it answers at once (503, or the new leader's answer), never
            # holding the write for the whole forward wait
            async with aiohttp.ClientSession() as session:
                sent = time.monotonic()
                async with session.post(f"{cluster.urls[old]}/v1/streams/direct-{uuid.uuid4().hex[:6]}",
                                        json={"events": [{"type": "T", "data": {}}]},
                                        timeout=aiohttp.ClientTimeout(total=30)) as response:
                    status, body = response.status, await response.json(content_type=None)
                took = time.monotonic() - sent
            assert status in (200, 503) and took < 1.5, (status, body, took)
        finally:
            cluster.lab.heal()
        print(f"{name} cut from etcd: longest window without an acknowledged append "
              f"{clients.longest_gap(cut_at, resumed):.2f}s; a write to it answered {status} in {took:.2f}s")
        assert await wait_full_isr(cluster, AFTER_WAIT) != old
        await clients.grows(DURING, AFTER_WAIT, "after healing")
        await assert_consistent(cluster, clients)


async def test_a_minority_partition_acknowledges_nothing_and_the_majority_goes_on(lab_cluster):
    """The leader alone on one side (no followers, no etcd), the two followers and etcd on the other."""
    cluster = lab_cluster
    old = await wait_full_isr(cluster)
    async with cas_clients(cluster) as clients:
        await fault_then_heal(cluster, clients, old, [*nodes_but(cluster, old), "etcd"])
        await assert_consistent(cluster, clients)


STALLED = 8


async def test_a_paused_leader_with_queued_compare_and_set_appends_tells_the_truth_after_resuming(lab_cluster):
    """SIGSTOP the leader with compare-and-set appends queued at it; a new leader takes over and the hot streams
    move on; on SIGCONT the queued appends are answered: a 200 only if it really committed where it says, a 409
    only naming a committed version (before issue 11.1 the resumed leader named versions written only later)."""
    cluster = lab_cluster
    old, old_epoch = cluster.wait_leader(LEADER_WAIT)
    stalled = cluster.node(old)
    history = History()
    async with cas_clients(cluster, history) as clients:
        await clients.grows(BEFORE, LEADER_WAIT, "before the pause")
        queued: list[asyncio.Task] = []
        async with aiohttp.ClientSession() as session:
            async def queued_append(stream: str, expected: int):
                attempt = history.record(stream, [str(uuid.uuid4())], expected)
                body = {"expectedVersion": expected, "events": [{"id": attempt.event_ids[0], "type": "Queued",
                                                                 "data": {}}]}
                try:
                    async with session.post(f"{stalled.url}/v1/streams/{stream}", json=body,
                                            timeout=aiohttp.ClientTimeout(total=60)) as response:
                        reply = await response.json(content_type=None)
                        if response.status == 200:
                            attempt.succeeded(reply)
                        elif 400 <= response.status < 500:
                            attempt.rejected({"status": response.status, **reply})
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass  # unknown
                return attempt

            current = {}
            for stream in clients.streams:
                async with session.get(f"{stalled.url}/v1/streams/{stream}", params={"direction": "backward",
                                                                                     "limit": "1"}) as response:
                    current[stream] = (await response.json())["version"] if response.status == 200 else 0
            try:
                stalled.signal(signal.SIGSTOP)
                queued = [asyncio.create_task(queued_append(s, current[s]))
                          for s in clients.streams for _ in range(STALLED // len(clients.streams) + 1)]
                new, new_epoch = await cluster.wait_leader_async(LEADER_WAIT, exclude=(old,))
                assert new_epoch > old_epoch
                await clients.grows(DURING, FAULT_WAIT, "while the leader is paused")
            finally:
                stalled.signal(signal.SIGCONT)
            attempts = await asyncio.wait_for(asyncio.gather(*queued), 90)
        print("appends queued at the paused leader:", [(a.status, (a.reply or {}).get("error")) for a in attempts])
        assert await wait_full_isr(cluster, AFTER_WAIT) != old
        await clients.grows(DURING, AFTER_WAIT, "after resuming")
        await assert_consistent(cluster, clients)
