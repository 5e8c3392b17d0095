"""The transient fan-out and subscriber state machine in one process, over a real SQLite log: tiny buffers
force overflows in catch-up and in live mode while appends race, and every subscriber still sees each
matching event exactly once, in order."""
from __future__ import annotations

import asyncio
import random

import pytest

from evstore.node.config import ConfigError, load_settings
from evstore.node.metrics import NodeMetrics
from evstore.node.subscriptions.selector import Selector
from evstore.node.subscriptions.transient import Start, TransientSubscriptions
from loghelpers import ev

WAIT = 30.0


async def consume(subscription, *, until: int, pause: float = 0.0, live: asyncio.Event | None = None,
                  hold: asyncio.Task | None = None) -> tuple[list[int], list[str]]:
    """Event positions (until one >= `until`) and the kinds of the other messages. With `live`: set it at
    caughtUp, then read nothing more until `hold` is done (a consumer that stalls while live)."""
    got, others = [], []
    async for batch in subscription.batches():
        for message in batch:
            if message.kind == "event":
                got.append(message.position)
            else:
                others.append(message.kind)
        if live is not None and "caughtUp" in others and not live.is_set():
            live.set()
            await hold
        if got and got[-1] >= until:
            return got, others
        if pause:
            await asyncio.sleep(pause * random.random())  # a slow consumer
    return got, others


@pytest.mark.parametrize("round_", range(10))
async def test_tiny_buffers_overflow_yet_every_subscriber_sees_each_event_once_in_order(log, round_):
    metrics = NodeMetrics()
    hub = TransientSubscriptions(log, buffer_events=3, buffer_bytes=1 << 20, metrics=metrics)
    for _ in range(50):
        await log.append("pre", "any", [ev() for _ in range(10)])

    slow_is_live = asyncio.Event()

    async def writer() -> int:
        last = 0
        for i in range(100):
            if i == 50:  # the rest while the slow subscriber is live and stalled: its buffer overflows for sure
                await slow_is_live.wait()
            last = (await log.append(f"s-{i % 3}", "any", [ev("Odd" if i % 2 else "Even")] * 1)).position
            await asyncio.sleep(0)
        return last

    writing = asyncio.create_task(writer())
    everything = await hub.subscribe(Selector(), Start(position=1), heartbeat=60)
    odd = await hub.subscribe(Selector(types=("Odd",)), Start(position=1), heartbeat=60)
    slow = await hub.subscribe(Selector(stream_prefix="s-"), Start(position=1), heartbeat=60)
    assert hub.count == 3 and metrics.subscribers._value.get() == 3
    head = 500 + 100
    results = await asyncio.wait_for(asyncio.gather(
        consume(everything, until=head), consume(odd, until=head),
        consume(slow, until=head, pause=0.01, live=slow_is_live, hold=writing)), WAIT)
    assert await writing == head
    (all_positions, all_other), (odd_positions, _), (slow_positions, _) = results
    assert all_positions == list(range(1, head + 1)) and all_other.count("caughtUp") == 1
    assert odd_positions == [501 + i for i in range(100) if i % 2]
    assert slow_positions == list(range(501, head + 1))
    assert metrics.subscriber_overflows._value.get() >= 1
    for subscription in (everything, odd, slow):
        subscription.close()
    assert hub.count == 0
    await hub.close()


async def test_the_limit_and_a_clean_close(log):
    hub = TransientSubscriptions(log, max_subscribers=1)
    first = await hub.subscribe(Selector(), Start(), heartbeat=60)
    try:
        await hub.subscribe(Selector(), Start(), heartbeat=60)
    except Exception as exc:  # noqa: BLE001 - the type is checked below
        assert getattr(exc, "code", None) == "unavailable" and exc.details["reason"] == "too_many_subscribers"
    else:
        raise AssertionError("a second subscriber was admitted past the limit")
    await log.append("s", "any", [ev()])  # after the start (the end when subscribing), before the first read
    batches = first.batches()
    assert [(m.kind, m.position) for m in await anext(batches)] == [("event", 1)]
    assert [(m.kind, m.position) for m in await anext(batches)] == [("caughtUp", 1)]
    await log.append("s", "any", [ev()])
    assert [(m.kind, m.position, m.live) for m in await anext(batches)] == [("event", 2, True)]
    closing = asyncio.create_task(hub.close())
    assert [(m.kind, m.position) for m in await asyncio.wait_for(anext(batches), WAIT)] == [("closed", 2)]
    first.close()
    await asyncio.wait_for(closing, WAIT)


@pytest.mark.parametrize("value", ["0", "100001", "many", "-1"])
def test_max_subscribers_setting_is_validated(value):
    with pytest.raises(ConfigError, match="--max-subscribers"):
        load_settings(["--max-subscribers", value])
    assert load_settings([], {"EVSTORE_MAX_SUBSCRIBERS": "7"}).max_subscribers == 7
    assert load_settings([]).max_subscribers == 1000


async def test_caught_up_comes_after_every_event_committed_before_the_subscription(log, monkeypatch):
    """The fan-out may not yet have offered what the log already shows (it runs behind, in its own task): a
    subscription still reads from the log up to what was visible when it attached before it says caughtUp."""
    from evstore.node.subscriptions import transient

    async def behind(self) -> None:  # a fan-out that never gets to run
        await asyncio.Event().wait()

    monkeypatch.setattr(transient.Fanout, "_run", behind)
    hub = TransientSubscriptions(log)
    first = await hub.subscribe(Selector(), Start(), heartbeat=60)
    assert [m.kind for m in await anext(first.batches())] == ["caughtUp"]  # attached: the fan-out starts at 0
    for _ in range(3):
        await log.append("s", "any", [ev(), ev()])
    late = await hub.subscribe(Selector(), Start(position=1), heartbeat=60)
    got, others = [], []
    async for batch in late.batches():
        got += [m.position for m in batch if m.kind == "event"]
        others += [m.kind for m in batch if m.kind != "event"]
        if "caughtUp" in others:
            break
    assert got == [1, 2, 3, 4, 5, 6]
    for subscription in (first, late):
        subscription.close()
    await hub.close()


async def test_a_live_subscriber_gets_what_commits_behind_a_page_s_byte_budget(log, monkeypatch):
    """The fan-out read each commit in pages and took a page shorter than its limit for all of it: one cut short
    by the reply's byte budget (16 MiB) left the rest of the commit unoffered, so a live subscriber with a
    selector never got an event behind it, and its heartbeats went past it."""
    from evstore.node.storage import reads
    monkeypatch.setattr(reads, "MAX_REPLY_BYTES", 4096)
    hub = TransientSubscriptions(log)
    small = await hub.subscribe(Selector(types=("Small",)), Start(), heartbeat=60)
    batches = small.batches()
    assert [m.kind for m in await asyncio.wait_for(anext(batches), WAIT)] == ["caughtUp"]
    written = await log.append("s", "any", [ev("Big", {"p": "x" * 1000}) for _ in range(40)] + [ev("Small")])
    got = [(m.kind, m.position) for m in await asyncio.wait_for(anext(batches), WAIT)]
    assert got == [("event", written.position)]
    small.close()
    await hub.close()
