"""`consume()` of a persistent subscription over its WebSocket (async and sync clients): deliveries,
ack/nack messages, reconnects, handshake errors, stop.

The server is a test double (tests/unit/subscription_double.py, a real aiohttp server on 127.0.0.1
speaking shared/API.md's consumer WebSocket) ONLY because the node's /v1/subscriptions routes do not exist
on this branch yet; tests/integration/test_subscribe_client.py runs the same client against a real node.
"""
from __future__ import annotations

import asyncio
import threading

import pytest

from evstore.client import AsyncEvstoreClient, EvstoreClient
from evstore.client.errors import SubscriptionNotFound, TooManyConsumers
from subscription_double import Double, event, start

WAIT = 10.0


def batch(*items: tuple[str, int, int]) -> dict:
    return {"events": [{"deliveryId": d, "attempt": a, "event": event(p)} for d, a, p in items]}


@pytest.fixture
async def double():
    d = Double()
    runner, url = await start(d)
    d.url = url
    yield d
    await runner.cleanup()


@pytest.fixture
async def client(double):
    async with AsyncEvstoreClient(double.url, timeout=5, max_retry_delay=0.2) as c:
        yield c


async def take(consumer, n: int) -> list:
    out = []
    async def run():
        async for item in consumer:
            out.append(item)
            if len(out) == n:
                return
    await asyncio.wait_for(run(), WAIT)
    return out


async def received(double: Double, n: int) -> list[dict]:
    async def wait():
        while len(double.ws_sent) < n:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), WAIT)
    return double.ws_sent


async def test_deliveries_with_ack_and_nack_messages(double, client):
    double.deliveries = [[batch(("d1", 1, 1), ("d2", 1, 2)), batch(("d3", 2, 3))]]
    async with client.consume("orders") as consumer:
        d1, d2, d3 = await take(consumer, 3)
        assert (d1.delivery_id, d1.attempt, d1.event["position"]) == ("d1", 1, 1)
        assert d3.attempt == 2 and d3.event == event(3)
        assert await d1.ack()
        assert await d2.nack("park")
        assert await consumer.ack([d3, "d9"])
        with pytest.raises(ValueError):
            await d3.nack("later")
        assert await received(double, 3) == [{"ack": ["d1"]}, {"nack": ["d2"], "action": "park"},
                                             {"ack": ["d3", "d9"]}]


async def test_a_dropped_socket_is_reconnected_and_old_deliveries_are_not_acked_on_the_new_one(double, client):
    double.deliveries = [[batch(("d1", 1, 1)), {"close": True}], [batch(("d1b", 2, 1))]]
    async with client.consume("orders") as consumer:
        first, again = await take(consumer, 2)
        assert (first.delivery_id, again.delivery_id, again.attempt) == ("d1", "d1b", 2)
        assert consumer.reconnects == 1 and double.ws_connections == 2
        assert not await first.ack()  # its socket is gone: nothing sent, the server delivers it again
        assert await again.ack()
        assert await received(double, 1) == [{"ack": ["d1b"]}]


async def test_a_follower_sends_the_consumer_to_the_leader(double):
    leader = Double(deliveries=[[batch(("d1", 1, 1))]])
    runner, leader_url = await start(leader)
    double.leader_url = leader_url
    try:
        async with AsyncEvstoreClient(double.url, timeout=5, max_retry_delay=0.2) as client:
            async with client.consume("orders") as consumer:
                (delivery,) = await take(consumer, 1)
                assert await delivery.ack()
                assert await received(leader, 1) == [{"ack": ["d1"]}]
        assert (double.ws_connections, leader.ws_connections) == (1, 1)
    finally:
        await runner.cleanup()


async def test_an_unreachable_node_hands_over_to_the_next(double):
    double.deliveries = [[batch(("d1", 1, 1))]]
    async with AsyncEvstoreClient("http://127.0.0.1:1", timeout=5, max_retry_delay=0.2) as client:
        async with client.consume("orders", nodes=[double.url]) as consumer:
            (delivery,) = await take(consumer, 1)
    assert delivery.delivery_id == "d1" and double.ws_connections == 1


async def test_handshake_errors_are_typed_and_503_is_retried(double, client):
    double.ws_refuse = [404]
    with pytest.raises(SubscriptionNotFound):
        await client.consume("gone").connect()
    double.ws_refuse = [409]
    with pytest.raises(TooManyConsumers):
        await client.consume("full").connect()
    double.ws_refuse = [503, 503]
    double.deliveries = [[batch(("d1", 1, 1))]]
    async with client.consume("orders") as consumer:
        (delivery,) = await take(consumer, 1)
    assert delivery.delivery_id == "d1" and double.ws_connections == 5


async def test_a_delete_ends_the_consumer_with_subscription_not_found(double, client):
    double.deliveries = [[batch(("d1", 1, 1)), {"close": True}]]
    double.ws_refuse = []
    async with client.consume("orders") as consumer:
        await take(consumer, 1)
        double.ws_refuse = [404]  # the subscription was deleted: reconnecting is refused
        with pytest.raises(SubscriptionNotFound):
            await take(consumer, 1)


async def test_stop_ends_a_pending_iteration(double, client):
    consumer = await client.consume("orders").connect()
    asyncio.get_running_loop().call_later(0.2, consumer.stop)
    assert await take(consumer, 1) == []
    assert consumer.stopped


async def test_sync_consumer_acks_and_stops_from_another_thread(double):
    double.deliveries = [[batch(("d1", 1, 1), ("d2", 1, 2))]]

    def consume() -> list[str]:
        with EvstoreClient(double.url, timeout=5) as client:
            with client.consume("orders") as consumer:
                seen = []
                for delivery in consumer:
                    seen.append(delivery.delivery_id)
                    assert delivery.ack() if delivery.delivery_id == "d1" else delivery.nack("skip")
                    if len(seen) == 2:
                        threading.Timer(0.2, consumer.stop).start()
                return seen

    assert await asyncio.wait_for(asyncio.to_thread(consume), WAIT) == ["d1", "d2"]
    assert await received(double, 2) == [{"ack": ["d1"]}, {"nack": ["d2"], "action": "skip"}]
