"""The control loop's decisions, as the sentences `_step` returns (issue 10's note): two members on an
in-memory coordinator (no etcd) with real logs; one wins, the other follows; a leader that stops leading says
why and resigns its key."""
from __future__ import annotations

import asyncio
import time

import pytest

from evstore.node.cluster.coordinator import InMemoryCoordinator
from evstore.node.cluster.member import ClusterConfig, ClusterMember, Role
from evstore.node.cluster.replication import Timing
from evstore.node.log import Log
from evstore.node.storage import Storage

WAIT = 10.0

pytestmark = pytest.mark.timeout(30)


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # the control loop runs in its own task: poll its state


@pytest.fixture
async def members(tmp_path):
    store = InMemoryCoordinator.Store()
    made: list[tuple[ClusterMember, Storage]] = []

    async def make(node: str) -> ClusterMember:
        storage = Storage(tmp_path / node)
        storage.open()
        config = ClusterConfig("s", node, f"http://127.0.0.1:1/{node}", "secret" * 4, cluster_size=3,
                               timing=Timing(2.0))
        member = ClusterMember(config, Log(storage, clustered=True), InMemoryCoordinator(store, lease_ttl=2.0))
        made.append((member, storage))
        await member.start()
        return member

    try:
        yield make
    finally:
        for member, storage in made:
            await member.close()
            storage.close()


async def test_one_wins_and_says_so_the_other_follows(members):
    a = await members("a")
    await until(lambda: a.role is Role.LEADER, "a to lead")
    assert a.decision.startswith("won the election: leading epoch") or a.decision.startswith("leading epoch")
    b = await members("b")
    await until(lambda: b.role is Role.FOLLOWER, "b to follow")
    assert b.decision == f"following a (epoch {a.leading.epoch})"
    await until(lambda: a.decision == f"leading epoch {a.leading.epoch}", "a's steady decision")


async def test_a_leader_whose_lease_lapses_says_why_and_resigns_its_key(members):
    a = await members("a")
    await until(lambda: a.role is Role.LEADER, "a to lead")
    epoch = a.leading.epoch
    a.coordinator.freeze()  # no keepalive: the lease is no longer surely alive
    await until(lambda: a.role is not Role.LEADER, "a to stop leading")
    await until(lambda: "stopped leading (lease expired)" in a.decision or a.decision.startswith("no leader"),
                "a's decision")
    assert await a.coordinator.leader() is None or (await a.coordinator.leader()).epoch != epoch
