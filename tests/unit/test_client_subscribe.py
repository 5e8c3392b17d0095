"""`subscribe()` (SSE) of the async and sync clients: log order, caughtUp, resume with Last-Event-ID after
drops (also from heartbeat positions), backoff, errors and stop.

The server is a test double (tests/unit/subscription_double.py, a real aiohttp server on 127.0.0.1
speaking shared/API.md's SSE contract) ONLY because the node's /v1/subscribe route does not exist on this
branch yet; tests/integration/test_subscribe_client.py runs the same client against a real node.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
import time

import pytest

from evstore.client import AsyncEvstoreClient, EvstoreClient, protocol
from evstore.client.errors import ConnectionFailed, InvalidRequest, StreamDeleted, Unavailable
from evstore.client.reconnect import backoff_delay
from subscription_double import Double, event, start

WAIT = 10.0


@pytest.fixture
async def double():
    d = Double(events=[event(p, "A" if p % 2 else "B") for p in range(1, 6)])
    runner, url = await start(d)
    d.url = url
    yield d
    await runner.cleanup()


@pytest.fixture
async def client(double):
    async with AsyncEvstoreClient(double.url, timeout=5, max_retry_delay=0.2) as c:
        yield c


async def take(subscription, n: int) -> list:
    out = []
    async def run():
        async for item in subscription:
            out.append(item)
            if len(out) == n:
                return
    await asyncio.wait_for(run(), WAIT)
    return out


async def test_catch_up_then_live_in_log_order_with_caught_up(double, client):
    async with client.subscribe(start="start") as sub:
        first = await take(sub, 5)
        assert [e["position"] for e in first] == [1, 2, 3, 4, 5]
        assert first[0]["type"] == "A" and first[0]["data"] == {"n": 1}
        await double.append(event(6), event(7))
        assert [e["position"] for e in await take(sub, 2)] == [6, 7]
        assert sub.caught_up and sub.position == 7
    assert sub.stopped
    assert double.requests[0]["accept"] == "text/event-stream"
    assert double.requests[0]["query"] == {"start": "start"}


async def test_position_and_caught_up_follow_what_the_caller_was_given(double, client):
    double.heartbeat_after_replay = True
    async with client.subscribe(start="start") as sub:
        await take(sub, 2)
        assert (sub.position, sub.caught_up) == (2, False)  # 3..5 and caughtUp may be buffered already
        await take(sub, 3)
        assert sub.position == 5  # caught_up too if the caughtUp message has arrived with event 5
        await double.append(event(6))
        await take(sub, 1)
        assert (sub.position, sub.caught_up) == (6, True)
    assert sub.stopped
    async with client.subscribe(after=sub.position) as resumed:  # a saved position continues exactly there
        await double.append(event(7))
        assert [e["position"] for e in await take(resumed, 1)] == [7]


async def test_include_control_yields_the_messages_as_sent(double, client):
    double.heartbeat_after_replay = True
    async with client.subscribe(types=["B"], start="start", include_control=True) as sub:
        messages = await take(sub, 4)
    assert messages == [{"event": event(2, "B")}, {"event": event(4, "B")}, {"caughtUp": True, "position": 5},
                        {"heartbeat": True, "position": 5}]
    assert double.requests[0]["types"] == ["B"]


async def test_drop_resumes_after_the_last_position_without_repeats(double, client):
    double.drop_after = [2, 1]  # first connection ends after 2 events, the second after 1
    async with client.subscribe(from_position=2) as sub:
        got = await take(sub, 4)
        assert [e["position"] for e in got] == [2, 3, 4, 5]
        assert sub.reconnects == 2
    assert [r["last_event_id"] for r in double.requests] == [None, "3", "4"]
    assert all(r["query"] == {"fromPosition": "2"} for r in double.requests)  # browsers resend the URL too


async def test_heartbeat_and_caught_up_positions_move_the_resume_point(double, client):
    double.heartbeat_after_replay = True
    double.drop_after = [0]  # replay, caughtUp, heartbeat, then the connection ends
    async with client.subscribe(types="A", start="start") as sub:
        got = await take(sub, 3)
        assert [e["position"] for e in got] == [1, 3, 5]
        await double.append(event(6, "A"))
        assert [e["position"] for e in await take(sub, 1)] == [6]
    assert double.requests[1]["last_event_id"] == "5"


async def test_a_filtered_subscription_resumes_past_skipped_events(double, client):
    """Nothing matched, but the heartbeat said 5 was scanned: the reconnect does not rescan 1..5."""
    double.heartbeat_after_replay = True
    double.drop_after = [0]
    async with client.subscribe(types="Nope", start="start", include_control=True) as sub:
        messages = await take(sub, 3)  # the first connection's caughtUp and heartbeat, the second's caughtUp
        assert messages[2] == {"caughtUp": True, "position": 5} and sub.reconnects == 1
    assert double.requests[1]["last_event_id"] == "5"


async def test_comment_heartbeats_and_crlf_lines_are_understood(double, client):
    double.comment_heartbeats = True
    double.crlf = True
    async with client.subscribe(start="start", include_control=True) as sub:
        messages = await take(sub, 6)
    assert [m["event"]["position"] for m in messages[:5]] == [1, 2, 3, 4, 5]
    assert messages[5] == {"caughtUp": True, "position": 5}


async def test_a_repeated_event_after_resume_is_dropped(double, client):
    double.repeat_on_resume = True
    double.drop_after = [2]
    async with client.subscribe(start="start") as sub:
        got = await take(sub, 5)
        assert sub.repeats_dropped == 1
    assert [e["position"] for e in got] == [1, 2, 3, 4, 5]


async def test_a_closing_node_is_resumed_and_another_error_ends_the_iteration(double, client):
    double.drop_after = [2, 1]
    double.end_with = [("closed", {"error": "unavailable", "reason": "shutting_down", "message": "m", "position": 2}),
                       ("error", {"error": "stream_deleted", "message": "gone", "position": 3})]
    async with client.subscribe(start="start") as sub:
        got = await take(sub, 3)
        with pytest.raises(StreamDeleted):
            await take(sub, 1)
        assert sub.stopped
    assert [e["position"] for e in got] == [1, 2, 3]
    assert [r["last_event_id"] for r in double.requests] == [None, "2"]


async def test_a_stopping_node_hands_over_to_another_node_of_the_store(double):
    other = Double(events=list(double.events))
    runner, other_url = await start(other)
    double.drop_after = [2]
    double.end_with = [("closed", {"error": "unavailable", "reason": "shutting_down", "message": "m", "position": 2})]
    try:
        async with AsyncEvstoreClient("http://127.0.0.1:1", timeout=5, max_retry_delay=0.2) as client:
            # the first node named is not even reachable: the first connection goes to the next
            async with client.subscribe(start="start", nodes=[double.url, other_url]) as sub:
                assert [e["position"] for e in await take(sub, 5)] == [1, 2, 3, 4, 5]
        assert [r["last_event_id"] for r in double.requests] == [None]
        assert [r["last_event_id"] for r in other.requests] == ["2"]
    finally:
        await runner.cleanup()


async def test_big_integers_in_data_survive(double, client):
    double.events = [event(1, data={"big": 123456789012345678901234567890})]
    async with client.subscribe(start="start") as sub:
        (got,) = await take(sub, 1)
    assert got["data"]["big"] == 123456789012345678901234567890


async def test_after_is_exclusive_like_eventsourcing_gt(double, client):
    async with client.subscribe(after=3) as sub:
        assert [e["position"] for e in await take(sub, 2)] == [4, 5]
    assert double.requests[0]["query"] == {"fromPosition": "4"}


async def test_stop_from_another_task_ends_a_pending_iteration(double, client):
    sub = client.subscribe()  # start=end: nothing comes
    await sub.connect()
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, sub.stop)
    started = time.monotonic()
    assert await asyncio.wait_for(take(sub, 1), WAIT) == []
    assert time.monotonic() - started < 5


async def test_closing_the_client_stops_its_subscriptions(double):
    client = AsyncEvstoreClient(double.url)
    sub = await client.subscribe(start="start").connect()
    await take(sub, 1)
    await client.close()
    assert sub.stopped
    assert await take(sub, 1) == []


# -- errors and backoff ---------------------------------------------------------------------------

async def test_the_first_connection_fails_at_once():
    async with AsyncEvstoreClient("http://127.0.0.1:1", timeout=2) as client:
        with pytest.raises(ConnectionFailed):
            await client.subscribe().connect()


async def test_a_4xx_is_raised_and_a_503_retried(double, client):
    double.refuse_with = [(503, {"error": "unavailable", "message": "too many subscribers", "retryAfter": 0.05}),
                          (400, {"error": "invalid_request", "message": "bad glob", "field": "streamPattern"})]
    with pytest.raises(InvalidRequest) as raised:
        await client.subscribe(stream_pattern="[").connect()
    assert raised.value.field == "streamPattern" and len(double.requests) == 2

    double.refuse_with = [(503, {"error": "unavailable", "message": "m"})] * 10
    with pytest.raises(Unavailable):
        await client.subscribe().connect()  # the client's retries (5) are spent


async def test_reconnecting_gives_up_after_reconnect_timeout():
    d = Double(events=[event(1)], drop_after=[1])
    runner, url = await start(d)
    async with AsyncEvstoreClient(url, timeout=2, max_retry_delay=0.1) as client:
        sub = await client.subscribe(start="start", reconnect_timeout=1.0).connect()
        assert [e["position"] for e in await take(sub, 1)] == [1]
        await runner.cleanup()  # the server goes away for good
        started = time.monotonic()
        with pytest.raises(ConnectionFailed):
            await asyncio.wait_for(take(sub, 1), WAIT)
        assert time.monotonic() - started < 5


def test_backoff_is_exponential_bounded_and_follows_retry_after():
    assert [backoff_delay(n, cap=1.0) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert backoff_delay(3, cap=5.0, hinted=2.5) == 2.5
    assert backoff_delay(3, cap=1.0, hinted=30) == 1.0


def test_subscribe_query_takes_one_selector_and_one_start():
    assert protocol.subscribe_query(types=["A", "B"], include_system=True, from_position=7) == [
        ("type", "A"), ("type", "B"), ("includeSystem", "true"), ("fromPosition", "7")]
    assert protocol.subscribe_query(stream="s", from_version=3) == [("stream", "s"), ("fromVersion", "3")]
    assert protocol.subscribe_query(payload={"a": {"b": 1}}) == [("payload", '{"a":{"b":1}}')]
    assert protocol.subscribe_query(type_prefix="Or", start="end") == [("typePrefix", "Or"), ("start", "end")]
    assert protocol.subscribe_query(after=0) == [("fromPosition", "1")]
    for bad in ({"stream": "s", "types": ["T"]}, {"stream_prefix": "a", "stream_pattern": "b*"},
                {"start": "middle"}, {"from_version": 2}, {"from_position": 1, "start": "start"},
                {"after": -1}, {"from_position": True}, {"payload": [1]}):
        with pytest.raises(ValueError):
            protocol.subscribe_query(**bad)


def test_sync_subscribe_and_consume_take_the_async_options():
    for name in ("subscribe", "consume"):
        assert inspect.signature(getattr(EvstoreClient, name)) == inspect.signature(getattr(AsyncEvstoreClient, name))


# -- the sync client ------------------------------------------------------------------------------

async def test_sync_subscription_iterates_and_stops_from_another_thread(double):
    def consume() -> tuple[list[int], bool]:
        with EvstoreClient(double.url, timeout=5) as client:
            with client.subscribe(start="start") as sub:
                seen = []
                threading.Timer(0.5, sub.stop).start()
                for item in sub:  # blocks after 5 events until stop() from the timer thread
                    seen.append(item["position"])
                return seen, sub.caught_up

    seen, caught_up = await asyncio.wait_for(asyncio.to_thread(consume), WAIT)
    assert seen == [1, 2, 3, 4, 5] and caught_up

