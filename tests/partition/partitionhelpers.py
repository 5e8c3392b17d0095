"""What the partition tests share: Jepsen-style clients doing compare-and-set appends on a few hot streams (each
client through its own node, reading before it writes, some reads with consistency=leader), every attempt and
read recorded with timings for the checker; bounded waits on cluster state; and the verdict."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid

import aiohttp

from evstore.client.harness.checker import History, check_cluster
from evstore.client.harness.localcluster import LocalCluster

LEASE_TTL = 3  # short leases: each fault resolves within seconds
LEADER_WAIT = 30.0
CLIENTS = 8
HOT_STREAMS = 3
READ_TIMEOUT = 5.0
APPEND_TIMEOUT = 10.0
BACKOFF = (0.05, 0.5)
POLL = 0.1  # cluster state lives in other processes: there is no event to await, only state to poll


class CasClients:
    """`clients` clients, client i talking only to node i % N. Each picks a hot stream, reads its version
    (every third read with consistency=leader), then appends one event expecting exactly that version; an
    answer that is not definite (503, timeout) is retried with the same event id and expected version."""

    def __init__(self, urls: list[str], history: History, clients: int = CLIENTS) -> None:
        self.urls = list(urls)
        self.history = history
        self.clients = clients
        self.streams = [f"hot-{uuid.uuid4().hex[:6]}-{k}" for k in range(HOT_STREAMS)]
        self.acknowledged = 0
        self.acked_at: list[float] = []  # monotonic answer times of the acknowledged appends
        self.errors: dict[str, int] = {}
        self._changed = asyncio.Event()
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> "CasClients":
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.clients * 2)) as session:
            await asyncio.gather(*(self._client(i, session) for i in range(self.clients)))

    async def _request(self, session, method: str, url: str, timeout: float, **kwargs) -> tuple[int | None, dict]:
        try:
            async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout),
                                       **kwargs) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = {}
                return response.status, body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return None, {"error": type(exc).__name__}

    def _count(self, status: int | None, body: dict) -> None:
        code = f"{status}:{body.get('reason') or body.get('error')}"
        self.errors[code] = self.errors.get(code, 0) + 1

    async def _pause(self, rng: random.Random) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), rng.uniform(*BACKOFF))

    async def _client(self, index: int, session: aiohttp.ClientSession) -> None:
        url, name, rng = self.urls[index % len(self.urls)], f"c{index}", random.Random(index)
        for n in itertools.count():
            if self.stop.is_set():
                return
            stream = rng.choice(self.streams)
            consistency = "leader" if n % 3 == 0 else None
            read = self.history.record_read(name, url, stream, consistency)
            params = {"direction": "backward", "limit": "1", **({"consistency": consistency} if consistency else {})}
            status, body = await self._request(session, "GET", f"{url}/v1/streams/{stream}", READ_TIMEOUT,
                                               params=params)
            if status == 404:
                read.returned(0)
            elif status == 200:
                read.returned(int(body["version"]))
            else:
                self._count(status, body)
                await self._pause(rng)
                continue
            attempt = self.history.record(stream, [str(uuid.uuid4())], read.version)
            payload = {"expectedVersion": read.version,
                       "events": [{"id": attempt.event_ids[0], "type": "Cas", "data": {"client": name, "n": n}}]}
            while not self.stop.is_set():
                status, body = await self._request(session, "POST", f"{url}/v1/streams/{stream}", APPEND_TIMEOUT,
                                                   json=payload)
                if status == 200:
                    attempt.succeeded(body)
                    self.acknowledged += 1
                    self.acked_at.append(attempt.answered)
                    self._changed.set()
                    break
                if status is not None and 400 <= status < 500:
                    attempt.rejected({"status": status, **body})
                    break
                self._count(status, body)
                await self._pause(rng)

    async def grows(self, by: int, timeout: float, what: str = "") -> None:
        """Wait (bounded) until `by` more appends are acknowledged."""
        target = self.acknowledged + by
        deadline = time.monotonic() + timeout
        while self.acknowledged < target:
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError("the clients ended by themselves")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {self.acknowledged} of {target} appends acknowledged within {timeout:g}s"
                                     f"{' ' + what if what else ''}; errors: {self.errors}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def longest_gap(self, since: float, until: float) -> float:
        """The longest window in [since, until] with no acknowledged append."""
        marks = [since, *sorted(t for t in self.acked_at if since < t < until), until]
        return max(b - a for a, b in zip(marks, marks[1:]))

    async def finish(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, APPEND_TIMEOUT + 10)

    async def abandon(self) -> None:
        self.stop.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


@contextlib.asynccontextmanager
async def cas_clients(cluster: LocalCluster, history: History | None = None):
    clients = CasClients(cluster.urls, history if history is not None else History()).start()
    try:
        yield clients
    finally:
        await clients.abandon()


async def view(session: aiohttp.ClientSession, url: str) -> dict | None:
    try:
        async with session.get(url + "/v1/cluster", timeout=aiohttp.ClientTimeout(total=2)) as response:
            return await response.json() if response.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        return None


async def wait_view(cluster: LocalCluster, index: int, wanted, what: str, timeout: float = 30.0) -> dict:
    """Poll node `index`'s /v1/cluster until `wanted(view)`."""
    deadline = time.monotonic() + timeout
    last = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            last = await view(session, cluster.urls[index])
            if last is not None and wanted(last):
                return last
            await asyncio.sleep(POLL)
    raise AssertionError(f"{what} within {timeout:g}s; last view of node{index + 1}: {last}\n{diagnosis(cluster)}")


async def wait_full_isr(cluster: LocalCluster, timeout: float = 60.0) -> int:
    """Until every node agrees on one leader whose ISR holds every node; the leader's index."""
    everyone = sorted(cluster.node_id(i) for i in range(cluster.size))
    deadline = time.monotonic() + timeout
    while True:
        leader, _epoch = await cluster.wait_leader_async(max(1.0, deadline - time.monotonic()))
        try:
            await wait_view(cluster, leader, lambda v: v.get("role") == "leader" and v.get("isr") == everyone,
                            "a full ISR", timeout=min(5.0, max(1.0, deadline - time.monotonic())))
            return leader
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def diagnosis(cluster: LocalCluster) -> str:
    parts = []
    for i, node in enumerate(cluster.nodes):
        parts.append(f"--- node{i + 1} {node.url} ({node.log_path}) ---\n{node.log()[-1500:]}")
    return "\n".join(parts)


async def assert_consistent(cluster: LocalCluster, clients: CasClients) -> None:
    await clients.finish()
    report = await check_cluster(cluster.urls, clients.history, converge_timeout=60.0)
    assert report.ok, f"{report.summary()}\n{diagnosis(cluster)}"
    assert report.acknowledged == clients.history.count("ok") > 0
    refusals = sum(1 for a in clients.history if a.status == "failed")
    leader_reads = sum(1 for r in clients.history.reads if r.consistency == "leader" and r.version is not None)
    print(f"checked: {report.summary().splitlines()[0]}; {refusals} 409s, {len(clients.history.reads)} reads "
          f"({leader_reads} consistency=leader)")
