"""A rolling upgrade from the previous peer protocol (static peer token, unsigned leader records) to the signed
one (issue 10, point 10), with real processes of both versions side by side under a write workload.

The previous version is the commit before signed leadership (PREVIOUS_REF, or EVSTORE_PREVIOUS_REF), taken from
this repository's git history with `git archive`. The roll is the one the README describes: every node restarted
on the new version with --peer-auth-compat (followers first, the leader after a step-down), then every node
restarted again without it. The checker proves nothing acknowledged was lost or duplicated across both rolls.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import io
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import aetcd
import orjson
import pytest

from evstore.client.async_client import AsyncEvstoreClient
from evstore.client.harness.checker import History, check_cluster
from evstore.client.harness.localcluster import LocalCluster
from evstore.client.harness.localnode import NodeProcess
from evstore.client.harness.workload import Workload

PREVIOUS_REF = os.environ.get("EVSTORE_PREVIOUS_REF", "42a7bbbb69229f853720762e93cc42b91427e02a")
REPO = Path(__file__).resolve().parents[2]
NEW_SRC = REPO / "src"
LEASE_TTL = 3
LEADER_WAIT = 30.0
LOAD_WAIT = 40.0

pytestmark = pytest.mark.timeout(300)


def previous_version(into: Path) -> Path:
    """The source tree of PREVIOUS_REF (its src/ for PYTHONPATH); skips when git or the commit is missing."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("needs this repository's git history (git archive of the previous version)")
    archive = subprocess.run([git, "-C", str(REPO), "archive", "--format=tar", PREVIOUS_REF, "src", "node",
                              "client", "operator"], capture_output=True, timeout=60)
    if archive.returncode != 0:
        pytest.skip(f"the previous version {PREVIOUS_REF[:12]} is not in this clone: "
                    f"{archive.stderr.decode(errors='replace').strip()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="tar")
    return into / "src"


class VersionedCluster(LocalCluster):
    """A LocalCluster whose nodes start on the previous version's code; `upgrade` restarts one on another."""

    def __init__(self, *args, old_src: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.old_src = old_src
        self.version: dict[int, str] = {}

    def _node_process(self, index: int) -> NodeProcess:
        node = super()._node_process(index)
        node.env = {**node.env, "PYTHONPATH": str(self.old_src)}
        self.version[index] = "old"
        return node

    def upgrade(self, index: int, version: str) -> None:
        node = self.nodes[index]
        node.terminate()
        base = tuple(a for a in node.args if a != "--peer-auth-compat")
        node.args = (*base, "--peer-auth-compat") if version == "compat" else base
        node.env = {**node.env, "PYTHONPATH": str(NEW_SRC)}
        node.start(wait=True)
        self.version[index] = version


async def wait_acknowledged(workload: Workload, task: asyncio.Task, more: int) -> None:
    target = workload.acknowledged + more
    reached = asyncio.ensure_future(workload.wait_acknowledged(target, LOAD_WAIT))
    await asyncio.wait({reached, task}, return_when=asyncio.FIRST_COMPLETED)
    if not reached.done():
        reached.cancel()
        task.result()
        raise AssertionError("the workload ended by itself")
    try:
        reached.result()
    except asyncio.TimeoutError:
        raise AssertionError(f"only {workload.acknowledged} of {target} appends acknowledged within {LOAD_WAIT:g}s; "
                             f"errors: {workload.errors}") from None


async def step_down(cluster: VersionedCluster, leader: int) -> int:
    async with AsyncEvstoreClient(cluster.node(leader).url, timeout=20) as client:
        await client.step_down()
    new, _ = await cluster.wait_leader_async(LEADER_WAIT, exclude=(leader,))
    return new


async def roll(cluster: VersionedCluster, version: str, workload: Workload, task: asyncio.Task,
               seen: list[tuple[str, tuple[str, ...]]]) -> None:
    """Restart every node on `version`, followers first (lowest node id first); right after the first one,
    leadership is handed to it (step-downs go to the lowest caught-up node id), so that the new version leads
    the old one for a while; the last node to go is the leader, after a step-down."""
    first = True
    while any(v != version for v in cluster.version.values()):
        leader, _ = await cluster.wait_leader_async(LEADER_WAIT)
        pending = sorted(i for i, v in cluster.version.items() if v != version)
        followers = [i for i in pending if i != leader]
        if followers:
            target = followers[0]
        else:
            await step_down(cluster, leader)
            target = leader
        await asyncio.to_thread(cluster.upgrade, target, version)
        await record(cluster, seen, workload, task)
        if first:
            first = False
            for _ in range(3):  # bounded: each step-down moves leadership to the lowest caught-up node
                leader, _ = await cluster.wait_leader_async(LEADER_WAIT)
                if cluster.version[leader] == version:
                    break
                await step_down(cluster, leader)
                await record(cluster, seen, workload, task)


async def record(cluster: VersionedCluster, seen: list, workload: Workload, task: asyncio.Task) -> None:
    leader, _ = await cluster.wait_leader_async(LEADER_WAIT)
    seen.append((cluster.version[leader], tuple(sorted(v for i, v in cluster.version.items() if i != leader))))
    await wait_acknowledged(workload, task, 20)


async def leader_record(cluster: LocalCluster) -> dict:
    host, port = "127.0.0.1", cluster.etcd.client_port
    async with aetcd.Client(host=host, port=port) as etcd:
        found = await etcd.get(f"/evstore/{cluster.store_id}/leader".encode())
    return orjson.loads(found.value)


async def test_rolling_upgrade_from_static_tokens_to_signed_peers(tmp_path):
    old_src = previous_version(tmp_path / "previous")
    cluster = VersionedCluster(tmp_path / "cluster", nodes=3, lease_ttl=LEASE_TTL,
                               store_id=f"roll-{uuid.uuid4().hex[:8]}", old_src=old_src)
    history = History()
    try:
        await asyncio.to_thread(cluster.start)
        await cluster.wait_leader_async(LEADER_WAIT)
        assert "sig" not in await leader_record(cluster)  # the previous version: unsigned
        workload = Workload(cluster.urls, writers=8, batch=(1, 3), history=history)
        stop = asyncio.Event()
        task = asyncio.create_task(workload.run(stop))
        seen: list[tuple[str, tuple[str, ...]]] = []  # (leader's version, followers' versions) after each step
        try:
            await wait_acknowledged(workload, task, 30)
            await roll(cluster, "compat", workload, task, seen)
            await roll(cluster, "new", workload, task, seen)
            stop.set()
            await asyncio.wait_for(task, workload.timeout + 10)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        print("leader/follower versions after each restart:", seen)
        # both directions of the mixed cluster were exercised, under load
        assert any(leader == "old" and "compat" in followers for leader, followers in seen), seen
        assert any(leader == "compat" and "old" in followers for leader, followers in seen), seen
        assert any(leader == "new" and "compat" in followers for leader, followers in seen), seen
        record = await leader_record(cluster)
        assert "sig" in record and "epoch" in record  # signed from here on
        report = await check_cluster(cluster.urls, history)
        assert report.ok, report.summary()
        assert report.acknowledged == history.count("ok") > 0
    finally:
        cluster.stop()
