"""Replication cost of one source tree: `python bench/ab_cluster.py TREE CASES DURATION` starts a standalone node
from TREE (its src/ on PYTHONPATH), runs the append cases against it, then does the same against the leader of a
3-node cluster (real etcd) from TREE, and prints leader/single throughput and p50 ratios per case. CASES:
comma-separated batch:concurrency pairs, e.g. 1:1,1:64,100:64. Run it for two trees in turn (before/after) on a
quiet machine, a few rounds each: single runs of a few seconds vary by 20-30 % here."""
import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "src"))
from evstore.client.bench.append import EvstoreTarget, LocalNode, append_body, event_data  # noqa: E402
from evstore.client.harness.localcluster import LocalCluster  # noqa: E402

tree, cases, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
pairs = [tuple(int(n) for n in pair.split(":")) for pair in cases.split(",")]
os.environ["PYTHONPATH"] = f"{Path(tree).resolve()}/src"  # the nodes' code; this script's stays HERE's


async def run_cases(url: str, label: str) -> list[dict]:
    run_id = f"{label}-{uuid.uuid4().hex[:8]}"
    data = event_data(100)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(c for _b, c in pairs))) as session:
        target = EvstoreTarget(session, url, run_id)
        await target.append(f"bench-{run_id}-warmup", append_body(data, 10), 10)
        return [(await target.append_case(batch, concurrency, data, duration, 10**7)).to_dict()
                for batch, concurrency in pairs]


node = LocalNode([])
node.new_session = False
node.start()
try:
    single = asyncio.run(run_cases(node.url, "single"))
finally:
    node.stop()
base = Path(tempfile.mkdtemp(prefix="evstore-ab-cluster-"))
cluster = LocalCluster(base, nodes=3, store_id=f"ab-{uuid.uuid4().hex[:6]}").start()
try:
    leader, _epoch = cluster.wait_leader(30)
    led = asyncio.run(run_cases(cluster.urls[leader], "leader"))
finally:
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)
for s, lead in zip(single, led):
    print(f"{Path(tree).name:12} b{s['batch']:<3} c{s['concurrency']:<3} single {s['eventsPerSecond']:>9,.0f} ev/s "
          f"p50 {s['p50Ms']:7.2f} ms | leader {lead['eventsPerSecond']:>9,.0f} ev/s p50 {lead['p50Ms']:7.2f} ms | "
          f"leader/single {lead['eventsPerSecond'] / s['eventsPerSecond']:.2f}  p50 x{lead['p50Ms'] / s['p50Ms']:.2f}")
