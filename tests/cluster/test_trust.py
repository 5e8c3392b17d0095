"""Leadership that cannot be forged (issue 10, point 4), against a real etcd and real node processes.

An attacker who can write to etcd puts a leader record of its own pointing at a listener the test runs. No
node may follow it: the listener must get no credential (in fact no request at all), writes keep being
acknowledged by a real node (or fail with 503 meanwhile), the forged record is counted, and the checker passes.
The internal routes take only per-request signatures: no static token, no replay, no other audience.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import urllib.request
import uuid

import aetcd
import aiohttp
import orjson
import pytest
from aiohttp import web

from evstore.client.harness.checker import History, check_cluster
from evstore.client.harness.localcluster import LocalCluster
from evstore.client.harness.localnode import free_port
from evstore.client.harness.workload import Workload
from evstore.node.cluster.auth import PEER_TOKEN_HEADER, LeaderRecords, PeerAuth, peer_token
from evstore.node.cluster.coordinator import MemberInfo
from evstore.node.cluster.wire import ROWS_MAGIC, decode
from evstore.node.storage import records_of_rows
from evstore.node.cluster.etcd import EtcdCoordinator

LEASE_TTL = 3
LEADER_WAIT = 30.0
LOAD_WAIT = 30.0
FETCH_PATH = "/v1/internal/replication/fetch"
TAKEOVER_PATH = "/v1/internal/replication/takeover"
POLL = 0.1  # cluster state lives in other processes: there is no event to await, only state to poll

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def start_cluster(tmp_path):
    made: list[LocalCluster] = []

    def start(nodes: int = 3, extra_args: tuple[str, ...] = ()) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(made)}", nodes=nodes, lease_ttl=LEASE_TTL,
                               store_id=f"trust-{uuid.uuid4().hex[:8]}", extra_args=extra_args)
        made.append(cluster)
        cluster.start()
        cluster.wait_leader(LEADER_WAIT)
        return cluster

    try:
        yield start
    finally:
        for cluster in made:
            cluster.stop()


class Listener:
    """A stand-in 'leader' on loopback that records every request and answers like a leader would."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.requests.append({"method": request.method, "path": request.path_qs,
                              "headers": dict(request.headers), "body": await request.read()})
        return web.json_response({"error": "intruder", "message": "answered by the forged leader"}, status=500)

    async def __aenter__(self) -> "Listener":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()


def etcd_address(cluster: LocalCluster) -> tuple[str, int]:
    return "127.0.0.1", cluster.etcd.client_port


async def wait_acknowledged(workload: Workload, task: asyncio.Task, more: int, timeout: float = LOAD_WAIT) -> None:
    target = workload.acknowledged + more
    reached = asyncio.ensure_future(workload.wait_acknowledged(target, timeout))
    await asyncio.wait({reached, task}, return_when=asyncio.FIRST_COMPLETED)
    if not reached.done():
        reached.cancel()
        task.result()
        raise AssertionError("the workload ended by itself")
    try:
        reached.result()
    except asyncio.TimeoutError:
        raise AssertionError(f"only {workload.acknowledged} of {target} appends acknowledged within {timeout:g}s; "
                             f"errors: {workload.errors}") from None


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def diagnosis(cluster: LocalCluster) -> str:
    return "\n".join(f"--- node{i + 1} ---\n{n.log()[-1500:]}" for i, n in enumerate(cluster.nodes))


async def test_a_forged_leader_record_is_ignored_and_gets_no_credential(start_cluster):
    cluster = start_cluster()
    leader, epoch = cluster.wait_leader(LEADER_WAIT)
    history = History()
    workload = Workload(cluster.urls, writers=8, batch=(1, 3), history=history)
    stop = asyncio.Event()
    task = asyncio.create_task(workload.run(stop))
    try:
        async with Listener() as listener:
            await wait_acknowledged(workload, task, 30)
            host, port = etcd_address(cluster)
            key = f"/evstore/{cluster.store_id}/leader".encode()
            forged = orjson.dumps({"node": "intruder", "url": listener.url})
            async with aetcd.Client(host=host, port=port) as etcd:
                await etcd.put(key, forged)  # over the real leader's record, as one etcdctl put would
                await wait_acknowledged(workload, task, 30)
                # and once more while no key exists at all (the attacker races the next election)
                await etcd.delete(key)
                await etcd.put(key, orjson.dumps({"node": "intruder", "url": listener.url, "epoch": 1,
                                                   "sig": "0" * 64}))
                await wait_acknowledged(workload, task, 30)
                held = await etcd.get(key)
            new_leader, new_epoch = await cluster.wait_leader_async(LEADER_WAIT)
            assert new_epoch >= epoch
            assert held is not None and b"intruder" not in held.value, "the forged record was left in place"
            token = peer_token(cluster.secret, cluster.store_id)
            for request in listener.requests:  # nothing reusable: no static token, no bearer, no secret
                flat = repr(request).lower()
                assert token not in flat and cluster.secret not in flat
                assert PEER_TOKEN_HEADER.lower() not in {h.lower() for h in request["headers"]}
            assert listener.requests == [], f"a node talked to the forged leader: {listener.requests[:3]}"
        stop.set()
        await asyncio.wait_for(task, workload.timeout + 10)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    # meanwhile, an append either was acknowledged (by a real node: the checker below) or got a 503 / no answer
    unexpected = {code: n for code, n in workload.errors.items()
                  if code not in ("unavailable", "not_leader", "ConnectionFailed", "TimeoutError",
                                  "ServerDisconnectedError", "ClientConnectorError", "ClientOSError")}
    assert not unexpected, f"appends answered with other errors: {unexpected}"
    rejected = sum(metric(url, "evstore_leader_records_rejected_total") for url in cluster.urls)
    assert rejected >= 1, "forged leader records were not counted"
    for node in cluster.nodes:
        text = node.log()
        assert cluster.secret not in text and peer_token(cluster.secret, cluster.store_id) not in text
    assert any("leader record" in node.log() for node in cluster.nodes), "the forged record was not logged"
    report = await check_cluster(cluster.urls, history)
    assert report.ok, f"{report.summary()}\n{diagnosis(cluster)}"
    assert report.acknowledged == history.count("ok") > 0


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def test_internal_routes_take_only_fresh_signed_requests_and_sign_their_replies(start_cluster):
    cluster = start_cluster(nodes=1)
    leader, epoch = cluster.wait_leader(LEADER_WAIT)
    node_url = cluster.node(leader).url
    url = node_url + FETCH_PATH
    body = orjson.dumps({"node": "node9", "url": "http://127.0.0.1:1", "epoch": epoch, "from": 1, "prevEpoch": 0})
    auth = PeerAuth(cluster.secret, cluster.store_id)
    async with aiohttp.ClientSession() as session:
        # the static peer token of the previous version no longer opens anything (no --peer-auth-compat)
        token = peer_token(cluster.secret, cluster.store_id)
        assert (await _post(session, url, body, {PEER_TOKEN_HEADER: token}))[0] == 401
        assert (await _post(session, url, body, {}))[0] == 401
        # a signed request passes, and the reply is signed for exactly this request
        signed = auth.sign_request("POST", node_url, FETCH_PATH, body)
        status, headers, payload = await _post(session, url, body, signed.headers)
        assert status == 200, payload
        assert auth.verify_reply(signed, status, headers, payload)
        assert not auth.verify_reply(auth.sign_request("POST", node_url, FETCH_PATH, body), status, headers, payload)
        assert not PeerAuth("another secret of 16+", cluster.store_id).verify_reply(signed, status, headers, payload)
        # replayed: refused
        assert (await _post(session, url, body, signed.headers))[0] == 401
        # another body, path or audience under the same signature: refused
        other = auth.sign_request("POST", node_url, FETCH_PATH, body)
        assert (await _post(session, url, body.replace(b"node9", b"node8"), other.headers))[0] == 401
        elsewhere = auth.sign_request("POST", "http://127.0.0.1:1", FETCH_PATH, body)
        assert (await _post(session, url, body, elsewhere.headers))[0] == 401
        takeover = auth.sign_request("POST", node_url, TAKEOVER_PATH, b'{"epoch": 1}')
        assert (await _post(session, url, b'{"epoch": 1}', takeover.headers))[0] == 401
        # too old: refused even with a fresh nonce
        stale = auth.sign_request("POST", node_url, FETCH_PATH, body, now=time.time() - 3600)
        assert (await _post(session, url, body, stale.headers))[0] == 401
        # another secret: refused
        wrong = PeerAuth("another secret of 16+", cluster.store_id).sign_request("POST", node_url, FETCH_PATH, body)
        assert (await _post(session, url, body, wrong.headers))[0] == 401
        # the control: signed, but an incomplete body is a 400
        empty = auth.sign_request("POST", node_url, FETCH_PATH, b"{}")
        assert (await _post(session, url, b"{}", empty.headers))[0] == 400
    assert metric(node_url, "evstore_peer_auth_rejected_total") >= 7
    digest = hashlib.sha256(body).hexdigest()
    assert digest not in cluster.node(leader).log()



async def test_a_fetch_ships_stored_rows_only_to_a_follower_that_asks_for_them(start_cluster):
    # a follower of the previous release never asks, and reads formats 1 and 2 only (rolling upgrades)
    cluster = start_cluster(nodes=1)
    leader, epoch = cluster.wait_leader(LEADER_WAIT)
    node_url = cluster.node(leader).url
    auth = PeerAuth(cluster.secret, cluster.store_id)
    async with aiohttp.ClientSession() as session:
        async with session.post(node_url + "/v1/streams/rows-1", json={"expectedVersion": "any", "events": [
                {"type": "T", "data": {"n": 18446744073709551617}}]}) as reply:
            assert reply.status == 200, await reply.text()
        for ask in (False, True):
            fetch = {"node": "node9", "url": "http://127.0.0.1:1", "epoch": epoch, "from": 1, "prevEpoch": 0}
            body = orjson.dumps({**fetch, "rows": True} if ask else fetch)
            signed = auth.sign_request("POST", node_url, FETCH_PATH, body)
            status, _headers, payload = await _post(session, node_url + FETCH_PATH, body, signed.headers)
            assert status == 200, payload
            assert payload.startswith(ROWS_MAGIC) == ask
            [record] = records_of_rows(decode(payload))
            assert (record.stream, record.data) == ("rows-1", b'{"n": 18446744073709551617}')  # as sent

# -- the coordinator's reading of the leader key, against a real etcd ------------------------------------

COORDINATOR_SECRET = "coordinator-trust-secret"


def coordinator_of(etcd, store: str, rejected: list[str]) -> EtcdCoordinator:
    return EtcdCoordinator((etcd.client_url,), store, lease_ttl=2, on_rejected_leader=rejected.append,
                           leader_records=LeaderRecords(COORDINATOR_SECRET, store))


async def test_coordinator_ignores_counts_and_removes_forged_and_copied_records(etcd):
    store = f"t-{uuid.uuid4().hex[:8]}"
    key = f"/evstore/{store}/leader".encode()
    rejected: list[str] = []
    a, b = coordinator_of(etcd, store, rejected), coordinator_of(etcd, store, rejected)
    me_a, me_b = MemberInfo("a", "http://127.0.0.1:1"), MemberInfo("b", "http://127.0.0.1:2")
    host, port = "127.0.0.1", etcd.client_port
    try:
        for c, me in ((a, me_a), (b, me_b)):
            await c.start(me)
            await asyncio.wait_for(c.wait_registered(), 15)
        async with aetcd.Client(host=host, port=port) as raw:
            await raw.put(key, orjson.dumps({"node": "intruder", "url": "http://127.0.0.1:9"}))
            assert await a.leader() is None and rejected == ["unsigned"]
            won = await a.campaign(me_a)  # the forged record is removed, then a real election
            assert won is not None and won.node == "a" and await b.leader() == won
            sealed = (await raw.get(key)).value
            # the genuine sealed record, copied to a new version of the key (same lease even): refused
            await raw.delete(key)
            await raw.put(key, sealed, lease=orjson.loads(sealed)["lease"])
            assert await b.leader() is None and "signed for another epoch" in rejected
            await raw.delete(key)
            # a copy of a's old claim, attached to a's live lease: a removes it and wins a fresh epoch
            claim = orjson.loads(sealed)
            stale = LeaderRecords(COORDINATOR_SECRET, store).claim("a", me_a.url, claim["lease"])
            await raw.put(key, stale, lease=claim["lease"])
            assert await b.leader() is None and await b.campaign(me_b) is None  # b must not remove a live claim
            again = await a.campaign(me_a)
            assert again is not None and again.epoch > won.epoch and await b.leader() == again
    finally:
        await a.close()
        await b.close()

