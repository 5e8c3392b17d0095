"""The node's etcd client against a real etcd that enforces authentication (JWT tokens, users restricted to
their store's key prefix) and one that serves TLS (issue 10, point 5). aetcd 1.0 fetches its token once and
opens only insecure channels; etcd.py wraps it, and these tests show both facts and that the wrapper handles them.
"""
from __future__ import annotations

import asyncio
import time
import uuid

import aetcd
import pytest

from evstore.client.async_client import AsyncEvstoreClient
from evstore.client.harness.localcluster import LocalCluster
from evstore.client.harness.localetcd import EtcdCluster, EtcdProcess, jwt_auth_token, make_test_tls
from evstore.node.cluster.auth import LeaderRecords
from evstore.node.cluster.coordinator import CoordinatorError, MemberInfo
from evstore.node.cluster.etcd import EtcdAccess, EtcdCoordinator

TOKEN_TTL = 3  # seconds a JWT token lives: the test outlives it
WAIT = 15.0
SECRET = "etcd-auth-test-secret"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def auth_etcd(tmp_path):
    proc = EtcdProcess(tmp_path / "etcd", auth_token=jwt_auth_token(tmp_path / "jwt", ttl=f"{TOKEN_TTL}s"))
    try:
        proc.start()
        proc.add_prefix_user("store-a", "password-a", "/evstore/a/")
        proc.add_prefix_user("store-b", "password-b", "/evstore/b/")
        proc.enable_auth("root-password")
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def tls_etcd(tmp_path):
    proc = EtcdProcess(tmp_path / "etcd", tls=make_test_tls(tmp_path / "tls"))
    try:
        yield proc.start()
    finally:
        proc.stop()


def coordinator(endpoint: str, store: str, access: EtcdAccess) -> EtcdCoordinator:
    return EtcdCoordinator((endpoint,), store, lease_ttl=2, leader_records=LeaderRecords(SECRET, store),
                           access=access, request_timeout=2)


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://")[1].split(":")
    return host, int(port)


async def test_prefix_user_leads_its_store_past_the_token_ttl_and_cannot_touch_another(auth_etcd):
    host, port = host_port(auth_etcd.client_url)
    a = coordinator(auth_etcd.client_url, "a", EtcdAccess(username="store-a", password="password-a"))
    try:
        await a.start(MemberInfo("n1", "http://127.0.0.1:1"))
        await asyncio.wait_for(a.wait_registered(), WAIT)
        won = await a.campaign(MemberInfo("n1", "http://127.0.0.1:1"))
        assert won is not None and (await a.leader()) == won

        # the fact behind the wrapper: aetcd alone keeps its first token, which etcd refuses after the TTL
        async with aetcd.Client(host=host, port=port, username="store-a", password="password-a") as plain:
            await plain.put(b"/evstore/a/probe", b"1")
            expired_at = time.monotonic() + TOKEN_TTL + 1
            # the coordinator keeps working through the token's expiry (its keepalive runs all along)
            while time.monotonic() < expired_at:
                assert (await a.leader()) == won
                assert not a.lease.lost
                await asyncio.sleep(0.5)  # pacing of the probe loop, not a synchronisation
            with pytest.raises(aetcd.exceptions.UnauthenticatedError, match="invalid auth token"):
                await plain.put(b"/evstore/a/probe", b"2")
        assert (await a.leader()) == won
        assert (await a.isr()).epoch == 0
        assert await a.set_isr(won.epoch, ("n1",), 0) is not None

        # a user of another store's prefix can neither write nor read ours
        async with aetcd.Client(host=host, port=port, username="store-b", password="password-b") as other:
            with pytest.raises(aetcd.exceptions.ClientError, match="permission denied"):
                await other.put(b"/evstore/a/leader", b'{"node": "intruder", "url": "http://127.0.0.1:1"}')
            with pytest.raises(aetcd.exceptions.ClientError, match="permission denied"):
                await other.get(b"/evstore/a/leader")
            await other.put(b"/evstore/b/own", b"fine")  # the control: its own prefix is writable
        assert (await a.leader()) == won
    finally:
        await a.close()

    # a coordinator with the wrong user, a wrong password, or none is refused, and says so
    for access in (EtcdAccess(username="store-b", password="password-b"),
                   EtcdAccess(username="store-a", password="wrong"), EtcdAccess()):
        c = coordinator(auth_etcd.client_url, "a", access)
        try:
            with pytest.raises(CoordinatorError):
                await c.members()
        finally:
            await c.close()


async def test_coordinator_over_tls_with_the_ca_and_refused_without(tls_etcd):
    assert tls_etcd.client_url.startswith("https://")
    c = coordinator(tls_etcd.client_url, "t", EtcdAccess(ca_file=tls_etcd.tls.ca_file))
    try:
        await c.start(MemberInfo("n1", "http://127.0.0.1:1"))
        await asyncio.wait_for(c.wait_registered(), WAIT)
        won = await c.campaign(MemberInfo("n1", "http://127.0.0.1:1"))
        assert won is not None and (await c.leader()) == won
    finally:
        await c.close()
    untrusted = coordinator(tls_etcd.client_url, "t", EtcdAccess())  # the system's roots do not know our CA
    try:
        with pytest.raises(CoordinatorError):
            await untrusted.members()
    finally:
        await untrusted.close()


async def test_a_node_runs_on_an_etcd_with_tls_and_authentication(tmp_path):
    proc = EtcdProcess(tmp_path / "etcd", tls=make_test_tls(tmp_path / "tls"),
                       auth_token=jwt_auth_token(tmp_path / "jwt", ttl=f"{TOKEN_TTL}s"))
    store = f"auth-{uuid.uuid4().hex[:8]}"
    password_file = tmp_path / "etcd-password"
    password_file.write_text("node-password\n")
    cluster = LocalCluster(tmp_path / "cluster", nodes=1, store_id=store, lease_ttl=2,
                           etcd_endpoints=(proc.client_url,),
                           extra_args=("--etcd-ca-file", str(proc.tls.ca_file), "--etcd-username", "node",
                                       "--etcd-password-file", str(password_file)))
    try:
        proc.start()
        proc.add_prefix_user("node", "node-password", f"/evstore/{store}/")
        proc.enable_auth("root-password")
        cluster.start()
        cluster.wait_leader(30)
        async with AsyncEvstoreClient(cluster.urls[0], timeout=5) as client:
            first = await client.append("s", [{"type": "T", "data": {}}])
            deadline = time.monotonic() + TOKEN_TTL + 1
            while time.monotonic() < deadline:  # past the token's TTL the node still leads and writes
                await asyncio.sleep(0.5)  # pacing, not a synchronisation
            second = await client.append("s", [{"type": "T", "data": {}}])
        assert second["position"] > first["position"]
        log = cluster.node(0).log()
        assert "node-password" not in log and "root-password" not in log
    finally:
        cluster.stop()
        proc.stop()


async def test_coordinator_moves_to_another_tls_member_and_authenticates_there(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd3", size=3, tls=make_test_tls(tmp_path / "tls"),
                          auth_token=jwt_auth_token(tmp_path / "jwt"))
    try:
        cluster.start()
        first = cluster.members[0]
        first.add_prefix_user("store-a", "password-a", "/evstore/a/")
        first.enable_auth("root-password")
        c = EtcdCoordinator(cluster.endpoints, "a", lease_ttl=3, leader_records=LeaderRecords(SECRET, "a"),
                            access=EtcdAccess(username="store-a", password="password-a",
                                              ca_file=first.tls.ca_file), request_timeout=2)
        try:
            await c.start(MemberInfo("n1", "http://127.0.0.1:1"))
            await asyncio.wait_for(c.wait_registered(), WAIT)
            won = await c.campaign(MemberInfo("n1", "http://127.0.0.1:1"))
            in_use = next(m for m in cluster.members if m.client_url == c.endpoint)
            in_use.stop()
            deadline = time.monotonic() + WAIT
            while True:  # the next call moves to another member, with a new channel and a new token
                try:
                    assert await c.leader() == won
                    break
                except CoordinatorError:
                    assert time.monotonic() < deadline, "no other etcd member answered"
            assert c.endpoint != in_use.client_url
        finally:
            await c.close()
    finally:
        cluster.stop()
