"""`evstore subscribe` and `evstore subscriptions ...`: options to requests, output, usage errors.

The server is a test double (tests/unit/subscription_double.py, a real aiohttp server on 127.0.0.1
speaking shared/API.md) ONLY because the node's subscription routes do not exist on this branch yet;
tests/integration/test_subscribe_client.py runs the same commands against a real node.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from evstore.client import output
from evstore.client.cli import cli
from subscription_double import Double, event, start

WAIT = 30.0


@pytest.fixture
async def double():
    d = Double(events=[event(p, "A" if p % 2 else "B") for p in range(1, 6)])
    runner, url = await start(d)
    d.url = url
    yield d
    await runner.cleanup()


@pytest.fixture
def run(double):
    async def invoke(*args: str):
        runner = CliRunner()
        return await asyncio.wait_for(asyncio.to_thread(runner.invoke, cli, ["--url", double.url, *args]), WAIT)
    return invoke


def json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_subscribe_json_prints_one_event_per_line(double, run):
    result = await run("subscribe", "--from", "start", "--count", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json_lines(result.stdout) == [event(1, "A"), event(2, "B"), event(3, "A")]
    assert double.requests[0]["query"] == {"start": "start"}


async def test_subscribe_plain_lines_and_the_caught_up_note(double, run):
    result = await run("subscribe", "--from", "4", "--no-follow")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ['4  s-1@4  B  {"n":4}', '5  s-1@5  A  {"n":5}']
    assert result.stderr.strip() == "-- caught up at position 5"
    assert double.requests[0]["query"] == {"fromPosition": "4"}


async def test_subscribe_passes_the_selectors(double, run):
    result = await run("subscribe", "--type", "A", "--type", "C", "--include-system", "--no-follow", "--json")
    assert result.exit_code == 0, result.output
    assert double.requests[0]["types"] == ["A", "C"] and double.requests[0]["query"]["includeSystem"] == "true"
    result = await run("subscribe", "--payload", '{"n": 3}', "--from", "end", "--no-follow")
    assert result.exit_code == 0, result.output
    assert double.requests[1]["query"] == {"payload": '{"n":3}', "start": "end"}
    result = await run("subscribe", "--stream", "s-1", "--from-version", "2", "--count", "1", "--json")
    assert result.exit_code == 0, result.output
    assert double.requests[2]["query"] == {"stream": "s-1", "fromVersion": "2"}


@pytest.mark.parametrize("args", [("--stream", "s", "--type", "T"), ("--payload", "[1]"), ("--payload", "{"),
                                  ("--from", "middle"), ("--from-version", "3"),
                                  ("--stream", "s", "--from", "1", "--from-version", "2")])
async def test_subscribe_usage_errors_send_nothing(double, run, args):
    result = await run("subscribe", *args)
    assert result.exit_code == 2, result.output
    assert double.requests == []
    if args[:2] == ("--stream", "s") and "--type" in args:
        assert "give one selector, not --stream and --type" in result.stderr


async def test_subscribe_to_no_node_exits_3():
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, cli, ["--url", "http://127.0.0.1:1", "subscribe"])
    assert result.exit_code == 3 and "cannot connect" in result.stderr


async def test_subscriptions_create_and_update_send_the_contract_settings(double, run):
    result = await run("subscriptions", "create", "orders", "--stream", "order-1", "--start-from", "start",
                       "--buffer-size", "5", "--ack-timeout", "2.5", "--max-retries", "3", "--concurrency-limit",
                       "2", "--partition-by", "stream")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "subscription orders: ready (stream order-1, from start)"
    assert double.http[-1] == ("PUT", "/v1/subscriptions/orders", {
        "stream": "order-1", "startFrom": "start", "bufferSize": 5, "ackTimeout": 2.5, "maxRetries": 3,
        "concurrencyLimit": 2, "partitionBy": "stream"})

    result = await run("subscriptions", "create", "typed", "--type", "A", "--type", "B", "--stream-prefix", "o-",
                       "--start-from", "42")
    assert result.exit_code == 0, result.output
    assert double.http[-1][2] == {"filter": {"type": ["A", "B"], "streamPrefix": "o-"}, "startFrom": 42}
    assert result.stdout.strip() == 'subscription typed: ready (type=["A","B"] streamPrefix="o-", from 42)'

    result = await run("subscriptions", "create", "everything")
    assert result.exit_code == 0, result.output
    assert double.http[-1][2] == {"filter": {}}

    result = await run("subscriptions", "update", "orders", "--buffer-size", "50")
    assert result.exit_code == 0, result.output
    assert double.http[-1] == ("PATCH", "/v1/subscriptions/orders", {"bufferSize": 50})
    assert result.stdout.strip() == "subscription orders: updated (bufferSize 50)"


@pytest.mark.parametrize("args", [("create", "x", "--stream", "s", "--type", "T"),
                                  ("create", "x", "--start-from", "soon"), ("create", "x", "--buffer-size", "0"),
                                  ("create", "x", "--partition-by", "type"), ("update", "x")])
async def test_subscriptions_usage_errors_send_nothing(double, run, args):
    result = await run("subscriptions", *args)
    assert result.exit_code == 2, result.output
    assert double.http == []


async def test_subscriptions_list_info_parked_replay_delete(double, run):
    entry = {"name": "orders", "stream": "order-1", "startFrom": "start", "bufferSize": 10, "checkpoint": 7,
             "head": 9, "lag": 2, "inFlight": 1, "parked": 1, "consumers": [{"id": "c1"}]}
    double.replies = {("GET", "/v1/subscriptions"): (200, {"subscriptions": [entry]}),
                      ("GET", "/v1/subscriptions/orders"): (200, entry),
                      ("GET", "/v1/subscriptions/orders/parked"): (200, {"events": [{"event": event(8)}]}),
                      ("POST", "/v1/subscriptions/orders/parked/replay"): (200, {"replayed": 1}),
                      ("DELETE", "/v1/subscriptions/orders"): (204, None),
                      ("GET", "/v1/subscriptions/nope"): (404, {"error": "subscription_not_found", "message": "no"})}
    listed = await run("subscriptions", "list")
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "SOURCE", "CHECKPOINT", "HEAD", "LAG", "IN", "FLIGHT", "PARKED", "CONSUMERS"]
    assert row.split() == ["orders", "stream", "order-1", "7", "9", "2", "1", "1", "1"]
    assert json_lines((await run("subscriptions", "list", "--json")).stdout) == [{"subscriptions": [entry]}]

    info = await run("subscriptions", "info", "orders")
    assert "checkpoint: 7" in " ".join(info.stdout.split()) and "consumers: 1" in " ".join(info.stdout.split())
    parked = await run("subscriptions", "parked", "orders")
    assert parked.stdout.splitlines()[1].split()[:4] == ["8", "s-1", "8", "Happened"]
    replay = await run("subscriptions", "replay", "orders")
    assert replay.stdout.strip() == "subscription orders: replaying parked events (replayed 1)"
    deleted = await run("subscriptions", "delete", "orders")
    assert deleted.exit_code == 0 and deleted.stdout.strip() == "subscription orders: deleted"
    missing = await run("subscriptions", "info", "nope")
    assert missing.exit_code == 1 and "subscription_not_found" in missing.stderr
    assert [(m, path) for m, path, _ in double.http][-3:] == [
        ("POST", "/v1/subscriptions/orders/parked/replay"), ("DELETE", "/v1/subscriptions/orders"),
        ("GET", "/v1/subscriptions/nope")]


def test_subscription_output_without_a_server():
    assert output.event_line(event(3, "T")) == '3  s-1@3  T  {"n":3}'
    assert output.subscriptions_table({"subscriptions": []}) == "(no subscriptions)"
    assert output.subscription_source({"filter": {"typePrefix": "Or"}}) == 'typePrefix="Or"'
    assert output.subscription_source({"settings": {"filter": {}}}) == "all"
    assert output.parked_events([]) == "(no parked events)"
