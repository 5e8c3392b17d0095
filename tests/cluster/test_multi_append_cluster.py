"""POST /v1/streams on a real 3-node cluster (real etcd, node processes on loopback): sent to followers it is
forwarded to the leader and readable on that follower once acknowledged (read-your-writes); a refusal names only
committed state; and under a workload of appends to several streams at once, SIGKILL of the leader and its
restart, the checker proves every such append all-or-nothing at contiguous positions, nothing acknowledged lost.
"""
from __future__ import annotations

import asyncio
import itertools
import random
import signal
import uuid

import aiohttp
import pytest

from evstore.client.async_client import AsyncEvstoreClient
from evstore.client.errors import EvstoreError, Unavailable, WrongExpectedVersion
from evstore.client.harness.checker import History, check_cluster
from evstore.client.harness.localcluster import LocalCluster
from evstore.client.harness.workload import outcome_unknown
from evstore.node.log import StreamAppend
from test_leader_replication import WAIT, _refused_and_waiting, ev, leading  # noqa: F401 (leading: a fixture)

LEASE_TTL = 3
LEADER_WAIT = 30.0
WRITERS = 8
STREAMS_PER_WRITER = 3
LOAD = 40  # acknowledged multi-stream appends to see in each load phase
LOAD_WAIT = 40.0
REQUEST_TIMEOUT = 10.0

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def cluster(tmp_path):
    made = LocalCluster(tmp_path / "cluster", nodes=3, lease_ttl=LEASE_TTL, store_id=f"multi-{uuid.uuid4().hex[:8]}")
    try:
        made.start()
        made.wait_leader(LEADER_WAIT)
        yield made
    finally:
        for node in made.nodes:
            node.signal(signal.SIGCONT)
        made.stop()


def diagnosis(cluster: LocalCluster) -> str:
    return "\n".join(f"--- node{i + 1} {n.url} ---\n{n.log()[-1500:]}" for i, n in enumerate(cluster.nodes))


def entry(stream: str, expected, count: int = 1) -> dict:
    return {"stream": stream, "expectedVersion": expected,
            "events": [{"id": str(uuid.uuid4()), "type": "Multi", "data": {"n": n}} for n in range(count)]}


async def test_through_a_follower_read_your_writes_and_a_409_naming_every_stream(cluster):
    leader, _ = cluster.wait_leader(LEADER_WAIT)
    follower = next(i for i in range(cluster.size) if i != leader)
    a, b = f"ryw-a-{uuid.uuid4().hex[:6]}", f"ryw-b-{uuid.uuid4().hex[:6]}"
    async with AsyncEvstoreClient(cluster.node(follower).url, timeout=20) as client:
        reply = await client.append_many([entry(a, "no_stream", 2), entry(b, "no_stream")])
        assert [r["version"] for r in reply["results"]] == [2, 1]
        # the follower answered only once it shows the write
        assert (await client.read_stream(b))["events"][0]["position"] == reply["position"]
        assert (await client.read_stream(a))["version"] == 2
        with pytest.raises(WrongExpectedVersion) as caught:
            await client.append_many([entry(a, 1), entry(b, 1), entry(f"{b}-new", "stream_exists")])
        assert [(f["stream"], f["currentVersion"]) for f in caught.value.failures] == [(a, 2), (f"{b}-new", 0)]
        assert (await client.read_all(from_position=reply["position"] + 1))["events"] == []


async def test_on_a_leader_a_409_waits_until_the_versions_it_names_are_committed(leading):
    from evstore.node.errors import WrongExpectedVersion as Refused
    lead, log = leading, leading.log
    fetch = asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 1, 0))
    first = asyncio.create_task(log.append_many([StreamAppend("a", "no_stream", [ev()]),
                                                 StreamAppend("b", "no_stream", [ev(), ev()])]))
    await asyncio.wait_for(fetch, WAIT)  # durable on the leader, not yet on the follower
    refusal = asyncio.create_task(log.append_many([StreamAppend("a", "no_stream", [ev()]),
                                                   StreamAppend("b", 2, [ev()])]))
    await asyncio.wait_for(_refused_and_waiting(lead, refusal), WAIT)
    assert not refusal.done() and not first.done()  # nothing it names is committed yet: no 409 so far
    asyncio.create_task(lead.fetch("follower", "http://f", lead.epoch, 4, lead.epoch))
    assert (await asyncio.wait_for(first, WAIT)).position == 3
    with pytest.raises(Refused) as refused:
        await asyncio.wait_for(refusal, WAIT)
    assert refused.value.details["failures"] == [{"stream": "a", "expectedVersion": "no_stream", "currentVersion": 1}]


class MultiLoad:
    """Writers that each own a few streams and append to two or three of them in one request with exact
    expected versions, over every node; an append without a definite answer is sent again, same ids, until it
    is answered (a retry of a write that happened gets the original reply)."""

    def __init__(self, urls: list[str], history: History) -> None:
        self.urls, self.history = urls, history
        self.prefix = f"ml-{uuid.uuid4().hex[:6]}"
        self.random = random.Random(13)
        self.acknowledged = 0
        self.changed = asyncio.Event()
        self.errors: dict[str, int] = {}
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            clients = [AsyncEvstoreClient(u, session=session, timeout=REQUEST_TIMEOUT, retries=0) for u in self.urls]
            pick = itertools.cycle(clients)
            await asyncio.gather(*(self.writer(w, pick) for w in range(WRITERS)))

    async def writer(self, w: int, pick) -> None:
        versions = {f"{self.prefix}-w{w}-s{k}": 0 for k in range(STREAMS_PER_WRITER)}
        while not self.stop.is_set():
            chosen = self.random.sample(sorted(versions), self.random.randint(2, STREAMS_PER_WRITER))
            body = [entry(s, versions[s], self.random.randint(1, 3)) for s in chosen]
            group = self.history.record_many((e["stream"], [ev["id"] for ev in e["events"]], e["expectedVersion"])
                                             for e in body)
            failures = 0
            while True:
                try:
                    reply = await next(pick).append_many(body)
                except (EvstoreError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    code = exc.code if isinstance(exc, EvstoreError) else type(exc).__name__
                    self.errors[code] = self.errors.get(code, 0) + 1
                    if not outcome_unknown(exc):
                        for attempt in group:
                            attempt.rejected({"status": exc.status, "error": exc.code, **exc.details})
                        raise AssertionError(f"a writer's own streams refused its append: {exc}") from None
                    if self.stop.is_set():
                        return  # stays "unknown": the checker proves it all-or-nothing
                    delay = min(1.0, 0.05 * 2 ** failures) * (0.5 + self.random.random())
                    if isinstance(exc, Unavailable) and exc.retry_after is not None:
                        delay = min(1.0, max(delay, exc.retry_after))
                    failures += 1
                    try:
                        await asyncio.wait_for(self.stop.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                    continue
                for attempt, result in zip(group, reply["results"]):
                    attempt.succeeded(result)
                    versions[attempt.stream] = result["version"]
                self.acknowledged += 1
                self.changed.set()
                self.changed = asyncio.Event()
                break

    async def grows(self, by: int = LOAD) -> None:
        target = self.acknowledged + by

        async def reach() -> None:
            while self.acknowledged < target:
                changed = asyncio.ensure_future(self.changed.wait())
                await asyncio.wait({changed, self.task}, return_when=asyncio.FIRST_COMPLETED)
                if self.task.done():
                    changed.cancel()
                    self.task.result()
                    raise AssertionError("the load ended by itself")

        try:
            await asyncio.wait_for(reach(), LOAD_WAIT)
        except asyncio.TimeoutError:
            raise AssertionError(f"only {self.acknowledged} of {target} appends acknowledged within {LOAD_WAIT:g}s; "
                                 f"errors: {self.errors}") from None

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, REQUEST_TIMEOUT + 10)


async def test_leader_failover_under_multi_stream_appends_is_all_or_nothing(cluster):
    old, old_epoch = cluster.wait_leader(LEADER_WAIT)
    history = History()
    load = MultiLoad(cluster.urls, history)
    try:
        await load.grows()
        await asyncio.to_thread(cluster.node(old).kill)
        new, new_epoch = await cluster.wait_leader_async(LEADER_WAIT, exclude=(old,))
        assert new != old and new_epoch > old_epoch
        before_restart = load.acknowledged
        await load.grows()
        await asyncio.to_thread(cluster.node(old).restart)
        await cluster.wait_leader_async(LEADER_WAIT)
        await load.grows()
        assert load.acknowledged > before_restart
        await load.finish()
    finally:
        if not load.task.done():
            load.stop.set()
            load.task.cancel()
            with pytest.raises(BaseException):
                await load.task
    report = await check_cluster(cluster.urls, history)
    assert report.ok, f"{report.summary()}\n{diagnosis(cluster)}"
    groups_ok = sum(1 for g in history.groups if all(a.status == "ok" for a in g))
    assert groups_ok == load.acknowledged > 0
    print(f"{len(history.groups)} multi-stream appends: {groups_ok} acknowledged; {report.summary().splitlines()[0]}; "
          f"errors seen: {load.errors}")


async def test_snapshots_replicate_and_every_node_trims_them_alike(cluster):
    leader, _ = cluster.wait_leader(LEADER_WAIT)
    follower = next(i for i in range(cluster.size) if i != leader)
    source = f"snap-{uuid.uuid4().hex[:6]}"
    async with AsyncEvstoreClient(cluster.node(follower).url, timeout=20) as client:
        for version in range(1, 6):
            saved = await client.save_snapshot(source, version=version, type="S", data=b"\x00%d" % version, keep=2)
        assert (await client.read_snapshot(source))["position"] == saved["position"]  # read-your-writes
    for url in cluster.urls:
        async with AsyncEvstoreClient(url, timeout=20) as client:
            async def trimmed() -> bool:
                page = await client.read_all(stream_prefix=f"$snapshot-{source}", limit=100)
                return len(page["events"]) == 2

            page = await client.read_snapshots(source)
            assert [s["version"] for s in page["snapshots"]] == [4, 5], url
            assert (await client.read_snapshot(source, max_version=4))["dataBase64"] == "ADQ="
            for _ in range(200):  # the trim runs about once a second on each node: bounded polling
                if await trimmed():
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the snapshots of {source} were not trimmed on {url}")
