"""The control loop's decisions, as the sentences `_step` returns (issue 10's note): two members on an
in-memory coordinator (no etcd) with real logs; one wins, the other follows; a leader that stops leading says
why and resigns its key."""
from __future__ import annotations

import asyncio
import logging
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


async def test_a_leader_whose_lease_lapses_says_why_and_resigns_its_key(members, caplog):
    caplog.set_level(logging.INFO, logger="evstore.cluster")
    a = await members("a")
    await until(lambda: a.role is Role.LEADER, "a to lead")
    epoch = a.leading.epoch
    a.coordinator.freeze()  # no keepalive: the lease is no longer surely alive
    await until(lambda: a.decision.startswith("no leader; not running: this node's etcd lease is not surely alive"),
                "a to stop running for leader")
    decisions = [r.getMessage().removeprefix("cluster step: ") for r in caplog.records
                 if r.getMessage().startswith("cluster step: ")]  # each decision is logged once, when it changes
    assert (f"stopped leading (lease expired); resigned the leader key of epoch {epoch}, which this node no longer "
            f"leads") in decisions
    assert await a.coordinator.leader() is None
    assert not [d for d in decisions[decisions.index(f"leading epoch {epoch}") + 1:] if "won" in d], \
        "a node without a live lease ran for leader (each win burns an epoch)"


async def test_a_node_whose_keepalive_lapsed_runs_again_once_it_is_refreshed(members):
    a = await members("a")
    await until(lambda: a.role is Role.LEADER, "a to lead")
    epoch = a.leading.epoch
    a.coordinator.freeze()
    await until(lambda: a.decision.startswith("no leader; not running"), "a to stop running for leader")
    a.coordinator.refresh()  # etcd answered a keepalive again
    await until(lambda: a.role is Role.LEADER, "a to lead again")
    assert a.leading.epoch > epoch


async def test_a_follower_is_ready_only_once_in_the_in_sync_set(members):
    """A follower catching up counted as ready: Kubernetes let a drain evict an in-sync replica while it counted
    towards the disruption budget, and a client Service sent reads to a copy far behind."""
    a = await members("a")
    await until(lambda: a.role is Role.LEADER, "a to lead")
    b = await members("b")
    await until(lambda: b.role is Role.FOLLOWER and b.following is not None, "b to follow")
    b.following.last_contact = time.monotonic()  # in touch with its leader (no replication over HTTP here)
    await until(lambda: b.isr, "b to learn the in-sync set")
    assert b.ready() == (False, "catching up: not in the in-sync set yet")
    isr = await a.coordinator.isr()
    await a.coordinator.set_isr(a.leading.epoch, set(isr.members) | {"b"}, isr.revision)
    await until(lambda: b.ready() == (True, ""), "b ready once in the in-sync set")
    assert a.ready() == (True, "")
