"""Where replication's CPU goes: `python bench/cluster_cpu.py TREE BATCH CONCURRENCY SECONDS` starts a 3-node
cluster from TREE (its src/ on PYTHONPATH) with a real etcd, runs one append case against the leader and prints
its events/s and p50 with the CPU (user + system) each node, etcd and this load generator spent per event
appended. With `--py-spy PREFIX` (py-spy installed) it also records each node for the case, as raw stacks in
PREFIX-nodeN.txt. Alternate two trees a few rounds: a single run of a few seconds varies by 20-30 % here."""
import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "src"))
from evstore.client.bench.append import EvstoreTarget, append_body, event_data  # noqa: E402
from evstore.client.harness.localcluster import LocalCluster  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def commits(session: aiohttp.ClientSession, url: str) -> tuple[float, float, float]:
    """(group commits, events in them, replication fetches answered) so far, from the node's metrics."""
    async with session.get(url + "/metrics") as reply:
        text = await reply.text()
    found = {"fetch": 0.0}
    for line in text.splitlines():
        for key in ("evstore_group_commit_events_count", "evstore_group_commit_events_sum"):
            if line.startswith(key + " "):
                found[key] = float(line.split()[1])
        if line.startswith("evstore_http_requests_total{") and 'route="/v1/internal/replication/fetch"' in line:
            found["fetch"] += float(line.split()[-1])
    return (found.get("evstore_group_commit_events_count", 0.0), found.get("evstore_group_commit_events_sum", 0.0),
            found["fetch"])


async def run_case(cluster: LocalCluster, leader: int, pids: dict[str, int], opts) -> None:
    data = event_data(100)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=opts.concurrency)) as session:
        via = leader if opts.via == "leader" else (leader + 1) % len(cluster.urls)
        target = EvstoreTarget(session, cluster.urls[via], f"cpu-{uuid.uuid4().hex[:8]}")
        await target.append("warmup", append_body(data, 10), 10)
        spies = [subprocess.Popen([opts.py_spy_binary, "record", "-p", str(pid), "-r", "200", "--threads",
                                   "-d", str(max(1, int(opts.seconds) - 1)), "-f", "raw",
                                   "-o", f"{opts.py_spy}-{name}.txt"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in pids.items() if opts.py_spy and name.startswith("node")]
        committed = [await commits(session, url) for url in cluster.urls]
        before, mine = {name: cpu_seconds(pid) for name, pid in pids.items()}, os.times()
        result = (await target.append_case(opts.batch, opts.concurrency, data, opts.seconds, 10**7)).to_dict()
        after, mine_after = {name: cpu_seconds(pid) for name, pid in pids.items()}, os.times()
        committed = [tuple(b - a for a, b in zip(was, await commits(session, url)))
                     for was, url in zip(committed, cluster.urls)]
        for spy in spies:
            spy.wait(timeout=opts.seconds + 30)
    events = result["eventsPerSecond"] * opts.seconds
    print(f"b{opts.batch} c{opts.concurrency} through the {opts.via}: {result['eventsPerSecond']:,.0f} ev/s, "
          f"p50 {result['p50Ms']:.2f} ms")
    for name in pids:
        role = " (leader)" if name == f"node{leader}" else ""
        line = f"  {name + role:16} {(after[name] - before[name]) / events * 1e6:8.1f} us CPU per event"
        if name.startswith("node"):
            count, stored, fetches = committed[int(name[4:])]
            line += f", {stored / count if count else 0:6.1f} events per group commit"
            if fetches:
                line += f", {fetches / events:5.2f} fetches answered per event"
        print(line)
    spent = (mine_after.user + mine_after.system) - (mine.user + mine.system)
    print(f"  {'load generator':16} {spent / events * 1e6:8.1f} us CPU per event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree")
    parser.add_argument("batch", type=int)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--via", choices=("leader", "follower"), default="leader",
                        help="send the appends to the leader (default) or to a follower, which forwards them")
    parser.add_argument("--py-spy", metavar="PREFIX")
    parser.add_argument("--py-spy-binary", default=shutil.which("py-spy") or "py-spy")
    opts = parser.parse_args()
    os.environ["PYTHONPATH"] = f"{Path(opts.tree).resolve()}/src"  # the nodes' code; this script's stays HERE's
    base = Path(tempfile.mkdtemp(prefix="evstore-cluster-cpu-"))
    cluster = LocalCluster(base, nodes=3, store_id=f"cpu-{uuid.uuid4().hex[:6]}").start()
    try:
        leader, _epoch = cluster.wait_leader(30)
        pids = {f"node{i}": cluster.node(i).pid for i in range(3)}
        pids["etcd"] = cluster.etcd.pid
        asyncio.run(run_case(cluster, leader, pids, opts))
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
