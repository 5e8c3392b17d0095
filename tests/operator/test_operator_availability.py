"""Operator availability (issue 10, point 9): replicas elect one active operator through a Lease
(kmock emulates the API server's resourceVersion conflict, see kmock_emulator.py), and the liveness
endpoint is served by the event loop, so it fails while the loop is stuck."""
from __future__ import annotations

import asyncio
import datetime
import threading
import time
import urllib.error
import urllib.request

import pytest
from kubernetes_asyncio.client import Configuration

from nodeproc import free_port
from evstore.operator.handlers import OperatorDeps
from evstore.operator.health import start_health_server
from evstore.operator.kube import Kube
from evstore.operator.leadership import LeaseElector
from evstore.operator.main import LEASE_NAME, run_elected
from evs_helpers import NAMESPACE, STS, api, create_evs, eventually, get_object, token_for

LEASES = "coordination.k8s.io/v1/leases"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture
async def kube(k8s):
    client = Kube(Configuration(host=str(k8s.url).rstrip("/")))
    yield client
    await client.close()


async def test_one_replica_holds_the_lease_until_it_stops_renewing(k8s, kube):
    clock = Clock()
    a = LeaseElector(kube, NAMESPACE, LEASE_NAME, "op-a", duration=15, now=clock)
    b = LeaseElector(kube, NAMESPACE, LEASE_NAME, "op-b", duration=15, now=clock)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    clock.advance(10)
    assert await a.try_acquire()  # a renewal
    clock.advance(10)
    assert not await b.try_acquire(), "renewed 10 s ago: still a's"
    clock.advance(6)
    assert await b.try_acquire(), "a stopped renewing: b takes over"
    assert not await a.try_acquire()
    lease = get_object(k8s, LEASES, LEASE_NAME)["spec"]
    assert (lease["holderIdentity"], lease["leaseTransitions"]) == ("op-b", 1)


async def test_two_replicas_taking_over_at_once_yield_one_holder(k8s, kube):
    clock = Clock()
    old = LeaseElector(kube, NAMESPACE, LEASE_NAME, "op-old", duration=15, now=clock)
    assert await old.try_acquire()
    clock.advance(60)
    contenders = [LeaseElector(kube, NAMESPACE, LEASE_NAME, f"op-{i}", duration=15, now=clock) for i in range(4)]
    # Every contender reads the expired Lease first, then all write: the resourceVersion decides.
    leases = await asyncio.gather(*(kube.get("Lease", NAMESPACE, LEASE_NAME) for _ in contenders))
    assert len({lease["metadata"]["resourceVersion"] for lease in leases}) == 1
    original_get = kube.get

    async def stale_get(kind, namespace, name):
        return leases[0] if kind == "Lease" else await original_get(kind, namespace, name)

    kube.get = stale_get
    won = await asyncio.gather(*(c.try_acquire() for c in contenders))
    kube.get = original_get
    assert sum(won) == 1
    holder = get_object(k8s, LEASES, LEASE_NAME)["spec"]["holderIdentity"]
    assert holder == contenders[won.index(True)].identity


def _start_replica(k8s, nodes, identity: str, health_port: int):
    """run_elected (what `evstore operator` runs) on its own loop in a thread, as one replica."""
    api_url = str(k8s.url).rstrip("/")

    async def configuration() -> Configuration:
        return Configuration(host=api_url)

    deps = OperatorDeps(kube_configuration=configuration, status_interval=0.3,
                        cluster_url=lambda store, ns, pod: f"{nodes.url}/pods/{pod}/v1/cluster",
                        step_down_url=lambda store, ns, pod: f"{nodes.url}/pods/{pod}/v1/cluster/step-down",
                        new_secret=lambda: "generated-test-secret", new_token=token_for, dashboards=lambda: {})
    result: dict[str, int] = {}

    def run() -> None:
        result["code"] = asyncio.run(run_elected(deps, namespace=NAMESPACE, identity=identity,
                                                 health_port=health_port, lease_duration=2, renew_every=0.2))

    thread = threading.Thread(target=run, name=f"operator-{identity}", daemon=True)
    thread.start()
    return thread, result


def _healthy(port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


async def test_the_standby_replica_takes_over_when_the_active_one_loses_its_lease(k8s, nodes):
    ports = [free_port(), free_port()]
    a, a_result = _start_replica(k8s, nodes, "op-a", ports[0])
    await eventually(lambda: (get_object(k8s, LEASES, LEASE_NAME) or {}).get("spec", {}).get("holderIdentity")
                     == "op-a", what="op-a active")
    b, b_result = _start_replica(k8s, nodes, "op-b", ports[1])
    try:
        await eventually(lambda: _healthy(ports[1]), what="the standby answers its liveness probe")
        await create_evs(k8s, "first")
        await eventually(lambda: get_object(k8s, STS, "first"), what="the active operator reconciles")
        assert get_object(k8s, LEASES, LEASE_NAME)["spec"]["holderIdentity"] == "op-a"

        # Someone else takes the Lease (as after a partition): op-a must stop, op-b stays on standby
        # until that holder's lease runs out, then becomes active.
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await api(k8s, "PATCH", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{LEASE_NAME}",
                  {"spec": {"holderIdentity": "op-x", "renewTime": now, "leaseDurationSeconds": 2}})
        await eventually(lambda: a_result.get("code") == 1, what="op-a stops with exit code 1")
        await eventually(lambda: get_object(k8s, LEASES, LEASE_NAME)["spec"]["holderIdentity"] == "op-b",
                         what="op-b takes over")
        await create_evs(k8s, "second")
        await eventually(lambda: get_object(k8s, STS, "second"), what="the new active operator reconciles")
    finally:
        # End the replicas: op-b's lease is taken away as above, so it stops too.
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await api(k8s, "PATCH", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{LEASE_NAME}",
                  {"spec": {"holderIdentity": "op-x", "renewTime": now, "leaseDurationSeconds": 60}})
        await asyncio.to_thread(a.join, 20)
        await asyncio.to_thread(b.join, 20)
    assert not a.is_alive() and not b.is_alive()


def test_liveness_fails_while_the_event_loop_is_stuck():
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(start_health_server(port, host="127.0.0.1"))
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        assert _healthy(port)
        unblock = threading.Event()
        loop.call_soon_threadsafe(unblock.wait, 10)  # a handler that blocks the loop
        assert not _healthy(port, timeout=1.0)
        unblock.set()
        deadline = time.monotonic() + 10
        while not _healthy(port):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
