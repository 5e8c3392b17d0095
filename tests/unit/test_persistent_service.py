"""The persistent subscription service in one process on a real SQLite log (no HTTP): only committed events
are delivered (KurrentDB #3472), checkpoints are written in batches of checkpointAfterEvents, and a leader
that takes over waits until what it holds is committed before it loads."""
from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

from evstore.node.errors import Unavailable
from evstore.node.log import Log
from evstore.node.storage import Storage
from evstore.node.subscriptions.persistent import PersistentSubscriptions
from evstore.node.subscriptions.store import checkpoint_stream
from evstore.node.subscriptions.settings import parse_settings
from loghelpers import ev

WAIT = 5.0


class CommitLater:
    """A clustered node's write gate that acknowledges at once but leaves `log.visible` to the test: the
    test plays the in-sync replicas that confirm (or do not confirm) what the leader wrote. With `refusing`
    it refuses writes as a node without quorum does."""

    def __init__(self) -> None:
        self.refusing = False
        self.attempts = 0

    @contextlib.asynccontextmanager
    async def writing(self):
        self.attempts += 1
        if self.refusing:
            raise Unavailable("no quorum", reason="not_enough_replicas")
        yield

    async def committed(self, position: int) -> None:
        return None


@pytest.fixture
def gate() -> CommitLater:
    return CommitLater()


@pytest.fixture
async def clustered_log(tmp_path, gate):
    storage = Storage(tmp_path / "data")
    storage.open()
    log = Log(storage, clustered=True)
    log.use_write_gate(gate)
    log.committed_position_known()  # as the leader's role says once it took over
    yield log
    storage.close()


@pytest.fixture
async def service(clustered_log):
    subscriptions = PersistentSubscriptions(clustered_log)
    await asyncio.wait_for(subscriptions.start(), WAIT)
    yield subscriptions
    await subscriptions.close()


def versions(deliveries) -> list[int]:
    return [d.event.version for d in deliveries]


async def test_uncommitted_events_are_never_delivered(clustered_log, service):
    log = clustered_log
    await service.create("sub", parse_settings({"stream": "s", "startFrom": "start"}))
    log.visible.advance(log.head)  # the definition and its stream metadata are committed
    for i in range(3):
        await log.append("s", "any", [ev(data={"i": i})])
    runtime = await service.runtime("sub")
    assert await runtime.fetch("c", 10, 0.3) == []  # written here, committed nowhere yet
    log.visible.advance(log.head - 2)
    assert versions(await runtime.fetch("c", 10, WAIT)) == [1]
    assert await runtime.fetch("c", 10, 0.2) == []
    log.visible.advance(log.head)
    assert versions(await runtime.fetch("c", 10, WAIT)) == [2, 3]


async def test_checkpoints_are_written_in_batches(clustered_log, service):
    log = clustered_log
    settings = parse_settings({"stream": "b", "startFrom": "start", "checkpointAfterEvents": 3,
                               "checkpointAfterSeconds": 3600})
    await service.create("batched", settings)
    await log.append("b", "any", [ev() for _ in range(7)])
    log.visible.advance(log.head)
    runtime = await service.runtime("batched")
    got = await runtime.fetch("c", 10, WAIT)
    assert len(got) == 7
    runtime.ack([d.delivery_id for d in got[:2]])
    await asyncio.sleep(0.2)  # give the maintenance task the chance to write (it must not)
    assert runtime.written_checkpoint == 0
    runtime.ack([got[2].delivery_id, got[4].delivery_id])
    await asyncio.wait_for(_written(runtime, 3), WAIT)  # four settled, but the checkpoint stops before 4
    runtime.ack([got[3].delivery_id])
    await asyncio.sleep(0.2)
    assert runtime.written_checkpoint == 3  # only one more settled since the last write
    runtime.ack([d.delivery_id for d in got[5:]])
    await asyncio.wait_for(_written(runtime, 7), WAIT)
    log.visible.advance(log.head)
    stored = await log.read_stream(checkpoint_stream("batched"), start=None, limit=10, backward=True)
    assert [orjson.loads(r.data)["checkpoint"] for r in stored.records] == [7, 3]


async def _written(runtime, checkpoint: int) -> None:
    while runtime.written_checkpoint < checkpoint:
        await runtime.changes.wait_for(runtime.changes.position + 1, timeout=0.1)


async def test_a_new_leader_loads_only_once_its_log_is_committed(clustered_log):
    log = clustered_log
    first = PersistentSubscriptions(log)
    await first.start()
    await first.create("late", parse_settings({"stream": "x"}))
    await first.close()
    # the definition is in this node's log but not (yet) committed: a new leader must not start without it
    second = PersistentSubscriptions(log)
    starting = asyncio.ensure_future(second.start())
    await asyncio.sleep(0.3)
    assert not starting.done()
    log.visible.advance(log.head)
    await asyncio.wait_for(starting, WAIT)
    assert [s["name"] for s in await second.list()] == ["late"]
    await second.close()


async def test_a_refused_checkpoint_write_is_retried_after_a_pause_not_in_a_loop(clustered_log, gate, service):
    log = clustered_log
    await service.create("refused", parse_settings({"stream": "r", "startFrom": "start",
                                                    "checkpointAfterEvents": 1}))
    await log.append("r", "any", [ev()])
    log.visible.advance(log.head)
    runtime = await service.runtime("refused")
    (delivery,) = await runtime.fetch("c", 10, WAIT)
    rounds = 0
    maintain_once = runtime._maintain_once

    async def counted():
        nonlocal rounds
        rounds += 1
        await maintain_once()

    runtime._maintain_once = counted  # the loop looks it up each round
    gate.refusing = True
    before = gate.attempts
    runtime.ack([delivery.delivery_id])
    await asyncio.sleep(0.5)  # within the retry pause: one attempt, and the loop sleeps meanwhile
    assert gate.attempts - before == 1 and runtime.written_checkpoint == 0
    assert rounds < 10, f"{rounds} maintenance rounds in 0.5 s: it spins"
    gate.refusing = False
    await asyncio.wait_for(_written(runtime, 1), WAIT)  # retried once the pause is over


async def test_an_idle_filtered_subscription_does_not_checkpoint_its_own_checkpoints(log):
    """Each checkpoint event moved the $all head past what a filter matches, so the checkpoint moved, and was
    written again a second later: one synced, replicated write a second per idle subscription, for ever."""
    now = [1000.0]
    service = PersistentSubscriptions(log, clock=lambda: now[0])
    await asyncio.wait_for(service.start(), WAIT)
    try:
        await service.create("idle", parse_settings({"filter": {"streamPrefix": "nothing-"}, "startFrom": "end",
                                                     "checkpointAfterSeconds": 1}))
        runtime = await service.runtime("idle")
        await log.append("other", "any", [ev() for _ in range(150)])  # more than checkpointAfterEvents scanned

        async def idle_rounds(count: int) -> None:
            for _ in range(count):
                await asyncio.wait_for(_scanned(runtime, log.visible.position), WAIT)
                now[0] += 5  # past checkpointAfterSeconds
                await runtime._maintain_once()

        await idle_rounds(1)
        assert runtime.written_checkpoint >= 150  # a long stretch nothing matched is still checkpointed
        head = log.head
        await idle_rounds(5)
        assert log.head == head, "the idle subscription keeps writing checkpoints of its own checkpoints"
    finally:
        await service.close()


async def _scanned(runtime, position: int) -> None:
    while runtime.state.scanned < position:
        await runtime.changes.wait_for(runtime.changes.position + 1, timeout=0.1)
