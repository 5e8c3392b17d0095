"""The store on a 3-member etcd keeps accepting writes when the etcd member its nodes talk to dies."""
from __future__ import annotations

import asyncio

from evstore.client.harness.checker import check_cluster
from evstore.client.harness.localcluster import LocalCluster
from evstore.client.harness.workload import Workload


async def wait_acknowledged(workload: Workload, more_than: int, timeout: float) -> None:
    await workload.wait_acknowledged(more_than + 1, timeout)


async def test_losing_one_etcd_member_under_load(etcd3, tmp_path):
    cluster = LocalCluster(tmp_path / "store", nodes=3, lease_ttl=3, etcd_endpoints=etcd3.endpoints)
    try:
        await asyncio.to_thread(cluster.start)
        await cluster.wait_leader_async(30)
        workload = Workload(cluster.urls, writers=8, batch=(1, 3))
        stop = asyncio.Event()
        load = asyncio.create_task(workload.run(stop))
        try:
            await wait_acknowledged(workload, 100, 30)
            # every node lists the members in the same order and starts with the first
            await asyncio.to_thread(etcd3.members[0].kill)
            before = workload.acknowledged
            await wait_acknowledged(workload, before + 200, 30)
        finally:
            stop.set()
            await asyncio.wait_for(load, 60)
        await cluster.wait_leader_async(30)
        report = await check_cluster(cluster.urls, workload.history)
        assert report.ok, report.problems
    finally:
        await asyncio.to_thread(cluster.stop)
