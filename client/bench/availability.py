"""`bench/cluster.py --faults`: availability under faults (issue 11.6). A 3-node cluster and its etcd, each in
its own network namespace (client/harness/netns.py; needs root), under the failover load of client/bench/
cluster.py (writers with exact expected versions, round-robin over all nodes, unknown outcomes retried with the
same ids). For each fault, `rounds` times: inject it, wait until a leader is agreed again and writes flow, heal,
wait until every node is back in the ISR. The figure is the longest window with no acknowledged write from the
fault until writes flow again (the load acknowledges a write every few milliseconds when the cluster is
healthy). Faults: SIGKILL of the leader (restarted afterwards), the leader cut off from its followers (it
still reaches etcd), the leader cut off from etcd, a restart of etcd. The consistency checker judges the whole
history at the end.
"""
from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..harness.checker import History, check_cluster
from ..harness.netns import NetnsCluster, NetnsLab, unavailable_reason
from .append import BenchError, Reporter

FAULTS = ("leader-sigkill", "leader-cut-from-followers", "leader-cut-from-etcd", "etcd-restart")
TARGETS = {"leader-sigkill": 6.0, "leader-cut-from-followers": 8.0, "leader-cut-from-etcd": 8.0,
           "etcd-restart": 10.0}  # issue 11.6, seconds, with the default lease
FLOWING = 30  # acknowledged writes after the fault that show writes flow again
FAULT_TIMEOUT = 60.0
SETTLE_TIMEOUT = 120.0
POLL = 0.1


@dataclass
class FaultRound:
    fault: str
    number: int
    leader_before: str
    window: float = 0.0
    leader_after: str = ""
    settle: float = 0.0

    def to_dict(self) -> dict:
        return {"fault": self.fault, "round": self.number, "leaderBefore": self.leader_before,
                "longestWindowSeconds": round(self.window, 3), "leaderAfter": self.leader_after,
                "settleSeconds": round(self.settle, 3)}


@dataclass
class Availability:
    rounds: list[FaultRound] = field(default_factory=list)
    check: dict | None = None
    skipped: str | None = None

    def by_fault(self) -> dict:
        out = {}
        for fault in FAULTS:
            windows = [r.window for r in self.rounds if r.fault == fault]
            if windows:
                out[fault] = {"rounds": len(windows), "maxSeconds": round(max(windows), 3),
                              "medianSeconds": round(statistics.median(windows), 3), "targetSeconds": TARGETS[fault],
                              "met": max(windows) < TARGETS[fault]}
        return out

    def to_dict(self) -> dict:
        return {"faults": self.by_fault(), "rounds": [r.to_dict() for r in self.rounds], "check": self.check,
                "skipped": self.skipped}


def longest_gap(acked: list[float], since: float, until: float) -> float:
    marks = [since, *sorted(t for t in acked if since < t < until), until]
    return max(b - a for a, b in zip(marks, marks[1:]))


async def _flowing_again(load, after: float, count: int, timeout: float) -> float:
    """Until `count` writes sent after `after` are acknowledged; the time the last of them was."""
    deadline = time.monotonic() + timeout
    while True:
        late = [t for t in load.acked_sent if t[0] >= after]
        if len(late) >= count:
            return sorted(a for _s, a in late)[count - 1]
        if time.monotonic() > deadline:
            raise BenchError(f"writes did not flow again within {timeout:g}s of the fault; errors {load.errors}")
        await asyncio.sleep(POLL)  # the load's acknowledgements arrive from other tasks: poll them


async def _inject(cluster: NetnsCluster, fault: str, leader: int) -> None:
    lab, name = cluster.lab, cluster.node_id(leader)
    if fault == "leader-sigkill":
        await asyncio.to_thread(cluster.node(leader).kill)
    elif fault == "leader-cut-from-followers":
        lab.isolate(name, [cluster.node_id(i) for i in range(cluster.size) if i != leader])
    elif fault == "leader-cut-from-etcd":
        lab.cut(name, "etcd")
    elif fault == "etcd-restart":
        await asyncio.to_thread(cluster.etcd.kill)
        await asyncio.to_thread(cluster.etcd.restart)


async def _repair(cluster: NetnsCluster, fault: str, leader: int) -> None:
    cluster.lab.heal()
    if fault == "leader-sigkill":
        await asyncio.to_thread(cluster.node(leader).start)


async def availability_runs(base_dir: Path, *, nodes: int, lease_ttl: float, writers: int, rounds: int,
                            check: bool, reporter: Reporter) -> Availability:
    from .cluster import FailoverLoad, wait_full_isr  # the failover phase's load and ISR wait

    result = Availability()
    reason = unavailable_reason()
    if reason is not None:
        result.skipped = reason
        reporter.say(f"  skipped: {reason}")
        return result
    lab = NetnsLab(NetnsCluster.hosts(nodes)).create()
    cluster = None
    try:
        cluster = NetnsCluster(lab, base_dir, nodes=nodes, lease_ttl=lease_ttl,
                               store_id=f"bench-{uuid.uuid4().hex[:6]}").start()
        history = History()
        load = FailoverLoad(cluster.urls, writers, history)
        stop = asyncio.Event()
        runner = asyncio.create_task(load.run(stop))
        try:
            await wait_full_isr(cluster, SETTLE_TIMEOUT)
            for number in range(1, rounds + 1):
                for fault in FAULTS:
                    leader, _epoch = await cluster.wait_leader_async(FAULT_TIMEOUT)
                    await load.acknowledged_more(FAULT_TIMEOUT)
                    one = FaultRound(fault, number, cluster.node_id(leader))
                    began = time.monotonic()
                    await _inject(cluster, fault, leader)
                    injected = time.monotonic()
                    exclude = () if fault == "etcd-restart" else (leader,)
                    new, _ = await cluster.wait_leader_async(FAULT_TIMEOUT, exclude=exclude)
                    # a leader cut off from etcd acknowledges writes until its lease runs out: the window ends
                    # only once writes sent after the new leader was agreed flow
                    agreed = max(injected, time.monotonic())
                    flowing = await _flowing_again(load, agreed, FLOWING, FAULT_TIMEOUT)
                    one.window = longest_gap([a for _s, a in load.acked_sent], began, flowing)
                    one.leader_after = cluster.node_id(new)
                    repaired = time.monotonic()
                    await _repair(cluster, fault, leader)
                    await wait_full_isr(cluster, SETTLE_TIMEOUT)
                    one.settle = time.monotonic() - repaired
                    result.rounds.append(one)
                    reporter.say(f"  {fault:<26} round {number}: longest window without an acknowledged write "
                                 f"{one.window:5.2f} s (leader {one.leader_before} -> {one.leader_after}; "
                                 f"all back in the ISR {one.settle:5.2f} s after the repair)")
        finally:
            stop.set()
            await runner
        if check:
            report = await check_cluster(cluster.urls, history, converge_timeout=SETTLE_TIMEOUT)
            result.check = report.to_dict()
            reporter.say("  check: " + report.summary().replace("\n", "\n  "))
    finally:
        lab.heal()
        if cluster is not None:
            cluster.stop()
        lab.destroy()
    return result
