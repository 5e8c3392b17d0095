"""`evstore bench --cluster 3` / `bench/cluster.py`: the single-node append workload against one node and
against a 3-node cluster (requests to the leader, then to a follower, which forwards them), and the
failover time over repeated SIGKILLs of the leader.

Phases, all in one invocation and in this process's process group (a group kill ends every child):
(a) appends of 1, 10 and 100 events per request at concurrency 1 and 64 (client/bench/append.py's cases) against
one standalone node; (b) the same cases against a cluster of real node processes and a real etcd on
127.0.0.1, sent to the leader and then to a follower; (c) on a fresh cluster, with a light load running
(writers appending with exact expected versions, round-robin over all nodes, retrying unknown outcomes with
the same ids), SIGKILL the leader, measure kill -> first successful write whose request was sent after the
kill, restart the killed node, wait until it is back in the ISR, and repeat; then the consistency checker
judges the load's history on every node. Failover time is dominated by the etcd lease TTL (`--lease-ttl`,
the node's default 5 s): the dead leader's key expires only with its lease.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from ...ids import uuid7_bytes
from ..harness.checker import History, check_cluster
from ..harness.localcluster import LocalCluster
from ..harness.localetcd import EtcdNotFound, etcd_binary
from .append import (APPEND_BATCHES, CONCURRENCIES, BenchError, CaseResult, EvstoreTarget, LocalNode, Reporter,
                     _interrupt_on_sigterm, append_body, event_data, ratios)

DEFAULT_LEASE_TTL = 5.0  # the node's own default (node/config.py); stated in the output
FAILOVER_TIMEOUT = 60.0  # per kill: no write for this long after the kill is a failure, not a measurement
REJOIN_TIMEOUT = 120.0
LEADER_TIMEOUT = 60.0
REQUEST_TIMEOUT = 20.0  # longer than a follower's wait for a new leader (node/api/cluster.py FORWARD_WAIT)
FIRST_BACKOFF = 0.02
MAX_BACKOFF = 0.25  # small: the backoff bounds how finely the first write after a failover is seen
POLL_INTERVAL = 0.1
LOG_TAIL = 3000


# -- throughput cases ----------------------------------------------------------------------------

class ForwardedTarget(EvstoreTarget):
    """Appends sent to a follower, which forwards them; group-commit figures come from the leader, which
    writes them (the follower's own counters describe its replication, not these requests)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, run_id: str, leader_url: str) -> None:
        super().__init__(session, url, run_id)
        self.leader = EvstoreTarget(session, leader_url, run_id)

    async def metrics(self) -> dict[str, float]:
        return await self.leader.metrics()


async def append_cases(url: str, label: str, opts: "Options", reporter: Reporter,
                       leader_url: str | None = None) -> list[CaseResult]:
    """client/bench/append.py's append cases against `url`; `label` names the target in the results."""
    run_id = f"{label}-{uuid.uuid4().hex[:8]}"
    data = event_data(opts.event_size)
    results = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(CONCURRENCIES)),
                                     timeout=timeout) as session:
        target = (EvstoreTarget(session, url, run_id) if leader_url is None
                  else ForwardedTarget(session, url, run_id, leader_url))
        await target.append(f"bench-{run_id}-warmup", append_body(data, 10), 10)
        for batch in APPEND_BATCHES:
            for concurrency in CONCURRENCIES:
                result = await target.append_case(batch, concurrency, data, opts.duration, opts.requests)
                result.system = label
                results.append(result)
                reporter.case(result)
    return results


# -- failover ------------------------------------------------------------------------------------

class FailoverLoad:
    """`writers` tasks, one stream each, appending one event at a time with the exact expected version,
    round-robin over `urls`. An append without a definite answer (503, another 5xx, no reply) is retried
    with the same event id and expected version until answered. Every attempt goes into `history` (for the
    checker); `watch(after)` returns an event set by the first 200 whose request was sent at or after `after`."""

    def __init__(self, urls: list[str], writers: int, history: History) -> None:
        self.urls = list(urls)
        self.writers = writers
        self.history = history
        self.prefix = f"failover-{uuid.uuid4().hex[:8]}"
        self.acknowledged = 0
        self.errors: dict[str, int] = {}
        self._next_url = itertools.cycle(self.urls)
        self._watch_after: float | None = None
        self._first_ok: asyncio.Event | None = None
        self.first_ok_at = 0.0
        self.acked_sent: list[tuple[float, float]] = []  # (sent, answered) of every acknowledged append
        self._progress = asyncio.Event()

    def watch(self, after: float) -> asyncio.Event:
        self._watch_after, self._first_ok = after, asyncio.Event()
        return self._first_ok

    async def acknowledged_more(self, timeout: float) -> None:
        """Returns once one more append is acknowledged (the load is flowing)."""
        self._progress.clear()
        await asyncio.wait_for(self._progress.wait(), timeout)

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                                         connector=aiohttp.TCPConnector(limit=self.writers * 2)) as session:
            await asyncio.gather(*(self._writer(session, w, stop) for w in range(self.writers)))

    async def _writer(self, session: aiohttp.ClientSession, writer: int, stop: asyncio.Event) -> None:
        stream = f"{self.prefix}-w{writer}"
        version = 0
        for sequence in itertools.count():
            if stop.is_set():
                return
            event_id = str(uuid.UUID(bytes=uuid7_bytes()[0]))
            attempt = self.history.record(stream, [event_id], version)
            body = orjson.dumps({"expectedVersion": version, "events": [
                {"id": event_id, "type": "FailoverProbe", "data": {"writer": writer, "seq": sequence}}]})
            failures = 0
            while not stop.is_set():
                sent = time.monotonic()
                status, reply = await self._post(session, next(self._next_url), stream, body)
                if status == 200:
                    attempt.succeeded(reply)
                    version = reply["version"]
                    self._acknowledged(sent)
                    break
                if status is not None and 400 <= status < 500:  # definite: nothing was written
                    attempt.rejected({"status": status, **reply})
                    self._count(str(reply.get("error", status)))
                    if isinstance(reply.get("currentVersion"), int):
                        version = reply["currentVersion"]
                    break
                self._count(str(reply.get("error", status)))
                await self._backoff(failures, stop)
                failures += 1

    async def _post(self, session: aiohttp.ClientSession, url: str, stream: str, body: bytes
                    ) -> tuple[int | None, dict]:
        try:
            async with session.post(f"{url}/v1/streams/{stream}", data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                payload = await response.read()
                try:
                    reply = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    reply = {"error": payload[:100].decode(errors="replace")}
                return response.status, reply if isinstance(reply, dict) else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return None, {"error": type(exc).__name__}

    def _acknowledged(self, sent: float) -> None:
        self.acknowledged += 1
        self.acked_sent.append((sent, time.monotonic()))
        self._progress.set()
        first_ok = self._first_ok
        if first_ok is not None and not first_ok.is_set() and self._watch_after is not None \
                and sent >= self._watch_after:
            self.first_ok_at = time.monotonic()
            first_ok.set()

    async def _backoff(self, failures: int, stop: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(stop.wait(), min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** failures))
        except asyncio.TimeoutError:
            pass

    def _count(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


async def cluster_json(session: aiohttp.ClientSession, url: str) -> dict | None:
    try:
        async with session.get(url + "/v1/cluster", timeout=aiohttp.ClientTimeout(total=2)) as response:
            return await response.json() if response.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        return None


async def wait_full_isr(cluster: LocalCluster, timeout: float) -> tuple[int, float]:
    """Waits until the agreed leader reports every node in its ISR; returns (leader index, seconds)."""
    began = time.monotonic()
    everyone = sorted(cluster.node_id(i) for i in range(cluster.size))
    last: dict | None = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - began < timeout:
            agreed = await asyncio.to_thread(cluster.agreed_leader)
            if agreed is not None:
                last = await cluster_json(session, cluster.urls[agreed[0]])
                if last is not None and last.get("role") == "leader" and sorted(last.get("isr", [])) == everyone:
                    return agreed[0], time.monotonic() - began
            await asyncio.sleep(POLL_INTERVAL)  # ISR changes have no event a client could await
    raise BenchError(f"the ISR did not hold all of {everyone} within {timeout:g}s; last leader view: "
                     f"{json.dumps(last)}")


@dataclass
class Kill:
    number: int
    killed: str
    epoch_before: int
    failover: float = 0.0
    new_leader: str | None = None
    epoch_after: int | None = None
    rejoin: float = 0.0

    def to_dict(self) -> dict:
        return {"kill": self.number, "killed": self.killed, "epochBefore": self.epoch_before,
                "failoverSeconds": round(self.failover, 3), "newLeader": self.new_leader,
                "epochAfter": self.epoch_after, "rejoinSeconds": round(self.rejoin, 3)}


async def failover_runs(cluster: LocalCluster, opts: "Options", reporter: Reporter) -> tuple[list[Kill], dict]:
    history = History()
    load = FailoverLoad(cluster.urls, opts.writers, history)
    stop = asyncio.Event()
    runner = asyncio.create_task(load.run(stop))
    kills: list[Kill] = []
    check = None
    try:
        await wait_full_isr(cluster, REJOIN_TIMEOUT)
        for number in range(1, opts.kills + 1):
            leader, epoch = await cluster.wait_leader_async(LEADER_TIMEOUT)
            await load.acknowledged_more(FAILOVER_TIMEOUT)
            kill = Kill(number, cluster.node_id(leader), epoch)
            signalled = time.monotonic()
            await asyncio.to_thread(cluster.node(leader).kill)  # SIGKILL, then reap
            first_ok = load.watch(time.monotonic())  # only requests sent once the process is gone count
            try:
                await asyncio.wait_for(first_ok.wait(), FAILOVER_TIMEOUT)
            except asyncio.TimeoutError:
                raise BenchError(f"kill {number}: no write succeeded within {FAILOVER_TIMEOUT:g}s after SIGKILL "
                                 f"of the leader {kill.killed} (epoch {epoch}); writer errors {load.errors}"
                                 ) from None
            kill.failover = load.first_ok_at - signalled
            new_leader, kill.epoch_after = await cluster.wait_leader_async(LEADER_TIMEOUT, exclude=(leader,))
            kill.new_leader = cluster.node_id(new_leader)
            restarted = time.monotonic()
            await asyncio.to_thread(cluster.node(leader).start)  # same data dir and port; waits until ready
            await wait_full_isr(cluster, REJOIN_TIMEOUT)
            kill.rejoin = time.monotonic() - restarted
            kills.append(kill)
            reporter.say(f"  kill {number}: SIGKILL leader {kill.killed} (epoch {epoch}) -> first write "
                         f"{kill.failover:6.2f} s, new leader {kill.new_leader} (epoch {kill.epoch_after}); "
                         f"{kill.killed} back in the ISR {kill.rejoin:5.2f} s after its restart")
    finally:
        stop.set()
        await runner
    if opts.check:  # the failover cluster holds only the load's events, so the whole history is judged
        report = await check_cluster(cluster.urls, history, converge_timeout=REJOIN_TIMEOUT)
        check = report.to_dict()
        reporter.say("  check: " + report.summary().replace("\n", "\n  "))
    summary = {"writers": opts.writers, "acknowledged": load.acknowledged, "writerErrors": load.errors,
               "attempts": {s: history.count(s) for s in ("ok", "failed", "unknown")}, "check": check}
    return kills, summary


def spread(values: list[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}


# -- orchestration -------------------------------------------------------------------------------

@dataclass
class Options:
    duration: float
    requests: int
    event_size: int
    nodes: int
    kills: int
    lease_ttl: float
    writers: int
    check: bool
    keep: bool
    json: bool
    faults: bool = False
    fault_rounds: int = 3


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="evstore bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", "--nodes", type=int, default=3, dest="nodes",
                        help="nodes in the cluster (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per case (default 5)")
    parser.add_argument("--requests", type=int, default=1_000_000, help="at most this many requests per case")
    parser.add_argument("--events-size", type=int, default=100, dest="event_size",
                        help="bytes of each event's JSON data (default 100)")
    parser.add_argument("--kills", type=int, default=5, help="leader kills for the failover time (default 5)")
    parser.add_argument("--lease-ttl", type=float, default=DEFAULT_LEASE_TTL,
                        help="the nodes' etcd lease TTL in seconds (default 5, the node's default)")
    parser.add_argument("--writers", type=int, default=8, help="writers of the load during the kills (default 8)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the consistency check of the failover cluster after the kills")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and node logs (path printed)")
    parser.add_argument("--quick", action="store_true", help="a tiny run of every case (for tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--faults", action="store_true",
                        help="only measure availability under faults: the longest window without an acknowledged "
                             "write after a leader SIGKILL, the leader cut from its followers, the leader cut from "
                             "etcd and an etcd restart (nodes and etcd in network namespaces: needs root)")
    parser.add_argument("--fault-rounds", type=int, default=3, help="rounds of each fault with --faults (default 3)")
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.duration = min(ns.duration, 0.25)
        ns.requests = min(ns.requests, 100)
    if ns.nodes < 3:
        parser.error("--cluster needs at least 3 nodes (with 2, killing the leader leaves fewer than minInSync)")
    if ns.duration <= 0 or ns.requests <= 0 or ns.event_size < 0 or ns.kills < 0 or ns.writers < 1:
        parser.error("--duration, --requests and --writers must be positive, --events-size and --kills not negative")
    if not 2 <= ns.lease_ttl <= 60:
        parser.error("--lease-ttl must be from 2 to 60 seconds (the node's range)")
    if ns.fault_rounds < 1:
        parser.error("--fault-rounds must be positive")
    return Options(ns.duration, ns.requests, ns.event_size, ns.nodes, ns.kills, ns.lease_ttl, ns.writers,
                   ns.check, ns.keep, ns.json, ns.faults, ns.fault_rounds)


def print_summary(reporter: Reporter, report: dict) -> None:
    by_target = {label: {c["case"]: c for c in report[label]} for label in ("single", "leader", "follower")}
    reporter.say(f"\n{'case':<16} {'single ev/s':>12} {'leader ev/s':>12} {'ratio':>6} {'follower ev/s':>14} "
                 f"{'ratio':>6}   p50/p99 ms single | leader | follower")
    for name, single in by_target["single"].items():
        leader, follower = by_target["leader"].get(name), by_target["follower"].get(name)

        def cell(case: dict | None) -> str:
            return "-" if case is None else f"{case['p50Ms']:.1f}/{case['p99Ms']:.1f}"

        def rate(case: dict | None) -> str:
            return "-" if case is None else f"{case['eventsPerSecond']:,.0f}"

        def ratio(label: str) -> str:
            value = report["ratio"][label].get(name)
            return "-" if value is None else f"{value:.2f}"

        reporter.say(f"{name:<16} {rate(single):>12} {rate(leader):>12} {ratio('leader'):>6} "
                     f"{rate(follower):>14} {ratio('follower'):>6}   {cell(single)} | {cell(leader)} | "
                     f"{cell(follower)}")
    failover = report["failover"]
    if failover["kills"]:
        s = failover["seconds"]
        reporter.say(f"\nfailover (SIGKILL leader -> first successful write sent after the kill), lease TTL "
                     f"{report['settings']['leaseTtl']:g} s, {len(failover['kills'])} kills: min {s['min']:.2f} s, "
                     f"median {s['median']:.2f} s, max {s['max']:.2f} s")


def start_cluster(base_dir: Path, opts: Options) -> LocalCluster:
    """etcd and the nodes in this process group (not new sessions): a group kill ends them with us."""
    return LocalCluster(base_dir, nodes=opts.nodes, lease_ttl=opts.lease_ttl,
                        store_id=f"bench-{uuid.uuid4().hex[:6]}").start()


def tails(cluster: LocalCluster | None) -> str:
    if cluster is None:
        return ""
    parts = []
    if cluster.etcd is not None:
        parts.append(f"--- etcd ({cluster.etcd.log_path}):\n{cluster.etcd.log()[-LOG_TAIL:]}")
    for i, node in enumerate(cluster.nodes):
        parts.append(f"--- {cluster.node_id(i)} ({node.log_path}):\n{node.log()[-LOG_TAIL:]}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else list(argv))
    reporter = Reporter(opts.json)
    try:
        etcd_binary()
    except EtcdNotFound as exc:
        print(f"evstore bench --cluster: {exc}", file=sys.stderr)
        return 2
    base_dir = Path(tempfile.mkdtemp(prefix="evstore-bench-cluster-"))
    if opts.faults:
        return faults_main(opts, reporter, base_dir)
    node: LocalNode | None = None
    cluster: LocalCluster | None = None
    restore_sigterm = _interrupt_on_sigterm()
    report: dict = {"settings": {"duration": opts.duration, "requestsPerCase": opts.requests,
                                 "eventSize": opts.event_size, "cpus": os.cpu_count(), "nodes": opts.nodes,
                                 "leaseTtl": opts.lease_ttl, "kills": opts.kills, "writers": opts.writers}}
    try:
        reporter.say(f"(a) one standalone node ({opts.duration:g} s per case, event data {opts.event_size} bytes, "
                     f"{os.cpu_count()} cpus):")
        node = LocalNode([])
        node.new_session = False  # stay in this process group: a group kill must end the node too
        node.start()
        single_cases = asyncio.run(append_cases(node.url, "single", opts, reporter))
        report["single"] = [r.to_dict() for r in single_cases]
        node.stop()
        node = None

        reporter.say(f"(b) {opts.nodes}-node cluster on 127.0.0.1 with a real etcd (lease TTL {opts.lease_ttl:g} s), "
                     f"data in {base_dir}:")
        cluster = start_cluster(base_dir / "throughput", opts)
        leader, epoch = cluster.wait_leader(LEADER_TIMEOUT)
        follower = (leader + 1) % opts.nodes
        reporter.say(f"  leader {cluster.node_id(leader)} (epoch {epoch}); follower used: {cluster.node_id(follower)}")
        leader_cases = asyncio.run(append_cases(cluster.urls[leader], "leader", opts, reporter))
        follower_cases = asyncio.run(append_cases(cluster.urls[follower], "follower", opts, reporter,
                                                  leader_url=cluster.urls[leader]))
        report["leader"] = [r.to_dict() for r in leader_cases]
        report["follower"] = [r.to_dict() for r in follower_cases]
        report["ratio"] = {"leader": ratios(leader_cases, single_cases),
                           "follower": ratios(follower_cases, single_cases)}

        cluster.stop()
        cluster = None

        reporter.say(f"(c) failover on a fresh {opts.nodes}-node cluster: {opts.kills} SIGKILLs of the leader under "
                     f"{opts.writers} writers (round-robin over all nodes, exact expected versions), "
                     f"lease TTL {opts.lease_ttl:g} s:")
        cluster = start_cluster(base_dir / "failover", opts)
        kills, summary = asyncio.run(failover_runs(cluster, opts, reporter))
        report["failover"] = {"leaseTtl": opts.lease_ttl, "kills": [k.to_dict() for k in kills],
                              "seconds": spread([k.failover for k in kills]),
                              "rejoinSeconds": spread([k.rejoin for k in kills]), **summary}
    except KeyboardInterrupt:
        print("evstore bench --cluster: interrupted", file=sys.stderr)
        return 130
    except (BenchError, RuntimeError, TimeoutError) as exc:
        print(f"evstore bench --cluster: {exc}\n{tails(cluster)}", file=sys.stderr)
        return 1
    finally:
        try:
            if node is not None:
                node.stop()
            if cluster is not None:
                cluster.stop()
        finally:
            restore_sigterm()
            if opts.keep:
                reporter.say(f"data dirs and node logs kept in {base_dir}")
            else:
                shutil.rmtree(base_dir, ignore_errors=True)

    errors = sum(c["errors"] for label in ("single", "leader", "follower") for c in report[label])
    check_failed = report["failover"]["check"] is not None and not report["failover"]["check"]["ok"]
    report["errors"] = errors
    print_summary(reporter, report)
    if opts.json:
        print(json.dumps(report, indent=2))
    return 1 if errors or check_failed else 0


def faults_main(opts: Options, reporter: Reporter, base_dir: Path) -> int:
    from .availability import availability_runs

    reporter.say(f"availability under faults: {opts.nodes} nodes and etcd in network namespaces, {opts.writers} "
                 f"writers (round-robin over all nodes, exact expected versions), lease TTL {opts.lease_ttl:g} s, "
                 f"{opts.fault_rounds} rounds of each fault:")
    restore_sigterm = _interrupt_on_sigterm()
    try:
        result = asyncio.run(availability_runs(base_dir / "faults", nodes=opts.nodes, lease_ttl=opts.lease_ttl,
                                               writers=opts.writers, rounds=opts.fault_rounds, check=opts.check,
                                               reporter=reporter))
    except KeyboardInterrupt:
        print("evstore bench --cluster: interrupted", file=sys.stderr)
        return 130
    except (BenchError, RuntimeError, TimeoutError) as exc:
        print(f"evstore bench --cluster --faults: {exc}", file=sys.stderr)
        return 1
    finally:
        restore_sigterm()
        if opts.keep:
            reporter.say(f"data dirs and node logs kept in {base_dir}")
        else:
            shutil.rmtree(base_dir, ignore_errors=True)
    report = {"settings": {"nodes": opts.nodes, "leaseTtl": opts.lease_ttl, "writers": opts.writers,
                           "rounds": opts.fault_rounds, "cpus": os.cpu_count()}, "availability": result.to_dict()}
    reporter.say(f"\n{'fault':<26} {'max s':>7} {'median s':>9} {'target s':>9}  met")
    for fault, figures in result.by_fault().items():
        reporter.say(f"{fault:<26} {figures['maxSeconds']:>7.2f} {figures['medianSeconds']:>9.2f} "
                     f"{figures['targetSeconds']:>9.0f}  {'yes' if figures['met'] else 'NO'}")
    if opts.json:
        print(json.dumps(report, indent=2))
    if result.skipped:
        return 2
    return 1 if result.check is not None and not result.check["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
