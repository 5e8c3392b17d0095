"""WatchedPosition: the one object that owns a log position and lets tasks await it."""
from __future__ import annotations

import asyncio

import pytest

from evstore.node.position import WatchedPosition, first_reached


async def test_an_advance_wakes_exactly_the_waiters_it_satisfies():
    position = WatchedPosition(3)
    low, high = position.reached(5), position.reached(9)
    assert position.reached(2).done() and position.reached(3).result() == 3
    assert not position.advance(3) and not position.advance(1)  # never backwards
    assert position.advance(6)
    await asyncio.sleep(0)
    assert low.result() == 6 and not high.done()
    assert position.advance(9)
    assert high.result() == 9


async def test_wait_for_is_bounded_and_true_once_reached():
    position = WatchedPosition()
    assert not await position.wait_for(1, timeout=0.01)
    waiting = asyncio.create_task(position.wait_for(2, timeout=5))
    await asyncio.sleep(0)
    position.advance(2)
    assert await asyncio.wait_for(waiting, 5)


async def test_a_bounded_wait_that_is_cancelled_as_its_position_arrives_ends_cancelled():
    # Python 3.11's asyncio.wait_for returned the result instead (a cancel lost): a subscription's maintenance
    # loop then kept running, and a node's shutdown waited for it forever
    position = WatchedPosition()
    for _ in range(3):
        waiting = asyncio.create_task(position.wait_for(position.position + 1, timeout=60))
        await asyncio.sleep(0)  # it waits
        position.advance(position.position + 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def test_a_monotonic_position_refuses_to_move_back_and_a_head_may():
    with pytest.raises(ValueError):
        WatchedPosition(5).reset(4)
    head = WatchedPosition(5, monotonic=False)
    head.reset(3)
    assert head.position == 3
    later = head.reached(4)
    head.reset(4)
    assert later.done() and head.position == 4


async def test_cancelled_waiters_do_not_pile_up():
    position = WatchedPosition()
    for _ in range(10_000):
        position.reached(1_000_000).cancel()
    assert len(position._waiters) < 1000


async def test_first_reached_returns_on_any_target_or_the_extra_future_and_cleans_up():
    a, b = WatchedPosition(), WatchedPosition()
    task = asyncio.create_task(first_reached([(a, 1), (b, 1)], timeout=5))
    await asyncio.sleep(0)
    b.advance(1)
    assert await asyncio.wait_for(task, 5)
    assert not await first_reached([(a, 1)], timeout=0.01)
    stop = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(first_reached([(a, 1)], timeout=5, also=stop))
    await asyncio.sleep(0)
    stop.set_result(None)
    assert await asyncio.wait_for(task, 5)
    assert not stop.cancelled()


async def test_awaited_says_whether_anything_still_waits():
    position = WatchedPosition(3)
    assert not position.awaited()
    waiter = position.reached(5)
    assert position.awaited()
    waiter.cancel()  # gave up
    assert not position.awaited()
    position.reached(4)
    position.advance(4)
    assert not position.awaited()
