"""Discovery with real zeroconf on 127.0.0.1 (IPv4 only), real name resolution of `localhost`, and the etcd
source through the callable it is given.

Other tests may announce on the same loopback at the same time, so every test uses a store id of its own and
asserts only about its own nodes."""
from __future__ import annotations

import asyncio
import uuid
from typing import Callable

import pytest

from evstore.node.cluster.coordinator import MemberInfo
from evstore.node.cluster.discovery import Discovery, Peer
from evstore.node.metrics import NodeMetrics

SECRET = "test-secret"
WAIT = 15.0  # bound on every wait for the network; a run takes about two seconds


@pytest.fixture
async def discoveries():
    started: list[Discovery] = []

    async def start(store: str, node: str, api_port: int, secret: str = SECRET, **kwargs) -> Discovery:
        kwargs.setdefault("methods", ("zeroconf",))
        kwargs.setdefault("interfaces", ("127.0.0.1",))
        discovery = Discovery(store, node, f"http://127.0.0.1:{api_port}", secret, metrics=NodeMetrics(), **kwargs)
        started.append(discovery)
        await discovery.start()
        return discovery

    try:
        yield start
    finally:
        await asyncio.gather(*(d.close() for d in started), return_exceptions=True)


def unique_store() -> str:
    return f"evs-{uuid.uuid4().hex[:8]}"


async def until_peers(discovery: Discovery, done: Callable[[dict[str, Peer]], bool]) -> dict[str, Peer]:
    async with asyncio.timeout(WAIT):
        while True:
            discovery.changed.clear()
            peers = discovery.peers()
            if done(peers):
                return peers
            await discovery.changed.wait()


def sample(discovery: Discovery, name: str, **labels: str) -> float | None:
    return discovery.metrics.registry.get_sample_value(name, labels)


async def until_counted(discovery: Discovery, reason: str) -> None:
    # rejections change no peer, so there is no event to await: poll the counter under the same bound
    async with asyncio.timeout(WAIT):
        while not sample(discovery, "evstore_gossip_rejected_total", reason=reason):
            await asyncio.sleep(0.05)


async def test_zeroconf_peers_see_each_other_and_reject_strangers(discoveries):
    store = unique_store()
    a, b, forged, foreign = await asyncio.gather(
        discoveries(store, "a", 7101),
        discoveries(store, "b", 7102),
        discoveries(store, "forged", 7103, secret="wrong-secret"),
        discoveries(unique_store(), "foreign", 7104))

    a_peers = await until_peers(a, lambda peers: "b" in peers)
    b_peers = await until_peers(b, lambda peers: "a" in peers)
    assert a_peers["b"] == Peer("b", "http://127.0.0.1:7102", "zeroconf")
    assert b_peers["a"] == Peer("a", "http://127.0.0.1:7101", "zeroconf")

    await until_counted(a, "bad_signature")
    await until_counted(a, "other_store")
    await until_counted(forged, "bad_signature")  # the forger rejects the genuine nodes in turn
    for discovery in (a, b):
        assert set(discovery.peers()) <= {"a", "b"} - {discovery.node_id}
    assert sample(a, "evstore_gossip_peers") == 1
    assert "a" not in foreign.peers() and "b" not in foreign.peers()


async def test_zeroconf_drops_a_peer_that_says_goodbye(discoveries):
    store = unique_store()
    a, b = await asyncio.gather(discoveries(store, "a", 7201), discoveries(store, "b", 7202))
    await until_peers(a, lambda peers: "b" in peers)

    await b.close()  # unregisters, which sends goodbye packets (a SIGKILLed peer would send none)
    assert await until_peers(a, lambda peers: "b" not in peers) == {}
    assert sample(a, "evstore_gossip_peers") == 0


async def test_dns_name_resolves_to_peers(discoveries):
    d = await discoveries(unique_store(), "a", 7301, methods=("dns",), dns_name="localhost", port=7302)
    # start() reads DNS once before returning
    assert d.peers() == {"dns:127.0.0.1": Peer("dns:127.0.0.1", "http://127.0.0.1:7302", "dns")}
    assert sample(d, "evstore_gossip_peers") == 1


async def test_dns_skips_this_nodes_own_address(discoveries):
    d = await discoveries(unique_store(), "a", 7401, methods=("dns",), dns_name="localhost", port=7401)
    assert d.peers() == {}


async def test_etcd_members_become_peers_and_errors_keep_the_last_answer(discoveries):
    answers: list[list[MemberInfo] | Exception] = [
        [MemberInfo("a", "http://127.0.0.1:7501"), MemberInfo("b", "http://127.0.0.1:7502")],
        ConnectionError("etcd is away"),
        [MemberInfo("a", "http://127.0.0.1:7501")],
    ]

    async def etcd_members() -> list[MemberInfo]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    d = await discoveries(unique_store(), "a", 7501, methods=("etcd",), etcd_members=etcd_members,
                          refresh_interval=3600)
    assert d.peers() == {"b": Peer("b", "http://127.0.0.1:7502", "etcd")}
    await d.refresh()
    assert set(d.peers()) == {"b"}
    await d.refresh()
    assert d.peers() == {}
