"""SIGKILL a real node under concurrent load: every acknowledged event survives, nothing has gaps,
and no batch is half-written. SIGTERM shuts down cleanly with the log flushed."""
from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import pytest

WORKERS = 24
BATCH = 3


async def _load(node, kill_after_acks: int | None, sig: int = signal.SIGKILL, prefix: str = "load", *,
                workers: int = WORKERS, batch: int = BATCH):
    """Workers append batches with expected versions to their own streams until the node dies."""
    acked: dict[str, list[tuple[int, str]]] = {}
    attempted: dict[str, list[list[str]]] = {}
    total = 0
    killed = asyncio.Event()

    async def worker(n: int, session: aiohttp.ClientSession):
        nonlocal total
        stream = f"{prefix}-{n}"
        acked[stream], attempted[stream] = [], []
        version = 0
        while not killed.is_set():
            ids = [str(uuid.uuid4()) for _ in range(batch)]
            attempted[stream].append(ids)
            body = {"expectedVersion": version, "events": [{"id": i, "type": "Loaded", "data": {"w": n}}
                                                            for i in ids]}
            try:
                async with session.post(f"{node.url}/v1/streams/{stream}", json=body) as resp:
                    reply = await resp.json()
                    assert resp.status == 200, reply
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return
            assert reply["fromVersion"] == version + 1
            version = reply["version"]
            acked[stream].extend((reply["fromVersion"] + k, ids[k]) for k in range(batch))
            total += 1
            if kill_after_acks is not None and total >= kill_after_acks and not killed.is_set():
                killed.set()
                node.signal(sig)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.wait_for(asyncio.gather(*(worker(n, session) for n in range(workers))), 60)
    return acked, attempted


async def _read_everything(url: str):
    async with aiohttp.ClientSession() as session:
        events, position = [], 1
        while position is not None:
            async with session.get(f"{url}/v1/all", params={"from": position, "limit": 4096}) as resp:
                page = await resp.json()
            events.extend(page["events"])
            position = page["next"]
        return events


def _check(acked, attempted, events):
    positions = [e["position"] for e in events]
    assert positions == list(range(1, len(events) + 1)), "positions must be gap-free from 1"
    by_stream: dict[str, list[dict]] = {}
    for e in events:
        by_stream.setdefault(e["stream"], []).append(e)
    for stream, got in by_stream.items():
        assert [e["version"] for e in got] == list(range(1, len(got) + 1)), f"{stream} has version gaps"
    stored_ids = {e["id"]: e for e in events}
    lost = [(s, v, i) for s, items in acked.items() for v, i in items
            if i not in stored_ids or stored_ids[i]["version"] != v or stored_ids[i]["stream"] != s]
    assert lost == [], f"acknowledged events lost or moved: {lost[:5]}"
    for stream, batches in attempted.items():
        for ids in batches:
            present = [i in stored_ids for i in ids]
            assert all(present) or not any(present), f"batch in {stream} is half-visible"


@pytest.mark.timeout(180)
async def test_sigkill_under_concurrent_load_loses_no_acknowledged_event(node):
    acked, attempted = await _load(node, kill_after_acks=400)
    node.wait_exit()
    assert node.proc.returncode == -signal.SIGKILL
    assert sum(len(v) for v in acked.values()) >= 400 * BATCH
    node.start()
    events = await _read_everything(node.url)
    _check(acked, attempted, events)
    # the restarted node carries on from the recovered head with no gap
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{node.url}/v1/streams/after-restart", json={"events": [{"type": "X"}]}) as resp:
            assert (await resp.json())["position"] == len(events) + 1


@pytest.mark.timeout(180)
async def test_sigkill_during_lone_single_event_appends_loses_no_acknowledged_event(node):
    """The path of the single-event benchmark at concurrency 1 (durability sync): one client, one event per
    request, each acknowledged only once its group commit is synced."""
    acked, attempted = await _load(node, kill_after_acks=300, prefix="lone", workers=1, batch=1)
    node.wait_exit()
    assert node.proc.returncode == -signal.SIGKILL
    assert len(acked["lone-0"]) >= 300
    node.start()
    events = await _read_everything(node.url)
    _check(acked, attempted, events)
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))


@pytest.mark.timeout(180)
async def test_repeated_kills_keep_the_log_consistent(node):
    all_acked, all_attempted = {}, {}
    for round_ in range(3):
        acked, attempted = await _load(node, kill_after_acks=100, prefix=f"round{round_}")
        node.wait_exit()
        all_acked.update(acked)
        all_attempted.update(attempted)
        node.start()
    _check(all_acked, all_attempted, await _read_everything(node.url))


@pytest.mark.timeout(120)
async def test_sigterm_flushes_and_exits_cleanly(node):
    acked, attempted = await _load(node, kill_after_acks=200, sig=signal.SIGTERM)
    assert node.wait_exit() == 0
    wal = node.data_dir / "evstore.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "a clean stop checkpoints the WAL"
    node.start()
    _check(acked, attempted, await _read_everything(node.url))


@pytest.mark.timeout(120)
async def test_interval_durability_survives_a_process_kill(node_factory):
    """With --durability interval the commit is in the OS before the reply; a process crash loses nothing."""
    node = node_factory("interval", args=("--durability", "interval", "--sync-interval", "0.05"))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{node.url}/v1/info") as resp:
            assert (await resp.json())["durability"] == "interval"
    acked, attempted = await _load(node, kill_after_acks=150)
    node.wait_exit()
    node.start()
    _check(acked, attempted, await _read_everything(node.url))
