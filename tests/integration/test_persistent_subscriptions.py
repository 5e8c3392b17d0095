"""Persistent subscriptions against a real node process (plain aiohttp, HTTP and WebSocket): create, info,
fetch/ack/nack, parking and replay, ack timeouts, a restart that keeps the checkpoint, competing consumers,
partitionBy stream, and the KurrentDB failures that must be impossible here (#1301, #1890, #3449)."""
from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

WAIT = 10.0  # bound on every wait for the node
pytestmark = pytest.mark.timeout(90)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def http():
    # no keep-alive: the restart tests replace the node behind the same URL
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def call(http, method: str, url: str, body=None, status: int | None = None):
    async with http.request(method, url, json=body) as reply:
        payload = await reply.json(content_type=None) if reply.status != 204 else None
        if status is not None:
            assert reply.status == status, (reply.status, payload)
        return reply.status, payload


async def append(http, base: str, stream: str, count: int, type_: str = "T") -> None:
    for i in range(count):
        await call(http, "POST", f"{base}/v1/streams/{stream}", {"events": [{"type": type_, "data": {"i": i}}]},
                   status=200)


async def fetch(http, base: str, name: str, max_: int = 100, wait: float = 2, consumer: str | None = None):
    query = f"?max={max_}&wait={wait:g}" + (f"&consumer={consumer}" if consumer else "")
    _status, body = await call(http, "POST", f"{base}/v1/subscriptions/{name}/fetch{query}", status=200)
    return body["events"]


async def fetch_until(http, base: str, name: str, count: int, **kw) -> list[dict]:
    got: list[dict] = []
    deadline = asyncio.get_running_loop().time() + WAIT
    while len(got) < count:
        assert asyncio.get_running_loop().time() < deadline, f"only {len(got)} of {count} deliveries"
        got += await fetch(http, base, name, **kw)
    return got


async def ack(http, base: str, name: str, deliveries) -> dict:
    ids = [d["deliveryId"] for d in deliveries]
    return (await call(http, "POST", f"{base}/v1/subscriptions/{name}/ack", {"ids": ids}, status=200))[1]


async def info(http, base: str, name: str) -> dict:
    return (await call(http, "GET", f"{base}/v1/subscriptions/{name}", status=200))[1]


async def info_until(http, base: str, name: str, predicate, what: str) -> dict:
    """Delivery state lives in the node process: poll its info (bounded)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        current = await info(http, base, name)
        if predicate(current):
            return current
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}: {current}"
        await asyncio.sleep(0.05)


def versions(deliveries) -> list[int]:
    return [d["event"]["version"] for d in deliveries]


# settings ----------------------------------------------------------------------------------------
async def test_create_is_idempotent_and_other_settings_conflict(shared_node, http):
    base, name, stream = shared_node.url, unique("orders"), unique("order")
    url = f"{base}/v1/subscriptions/{name}"
    status, created = await call(http, "PUT", url, {"stream": stream, "startFrom": "start", "bufferSize": 5})
    assert status == 201
    assert created["name"] == name and created["stream"] == stream and created["bufferSize"] == 5
    assert created["maxRetries"] == 10 and created["ackTimeout"] == 30 and created["partitionBy"] == "none"
    assert (created["checkpoint"], created["inFlight"], created["parked"], created["consumers"]) == (0, 0, 0, 0)
    assert (await call(http, "PUT", url, {"stream": stream, "startFrom": "start", "bufferSize": 5}))[0] == 200
    status, conflict = await call(http, "PUT", url, {"stream": stream, "startFrom": "start", "bufferSize": 6})
    assert (status, conflict["error"]) == (409, "subscription_exists")
    listed = (await call(http, "GET", f"{base}/v1/subscriptions", status=200))[1]["subscriptions"]
    assert name in [s["name"] for s in listed]
    await call(http, "DELETE", url, status=204)
    status, missing = await call(http, "GET", url)
    assert (status, missing["error"]) == (404, "subscription_not_found")
    assert (await call(http, "DELETE", url))[0] == 404


@pytest.mark.parametrize("body, field", [
    ({}, "stream"),
    ({"stream": "a", "filter": {}}, "stream"),
    ({"stream": "$all"}, "stream"),
    ({"stream": "a", "bufferSize": 0}, "bufferSize"),
    ({"stream": "a", "bufferSize": 1001}, "bufferSize"),
    ({"stream": "a", "ackTimeout": "30"}, "ackTimeout"),
    ({"stream": "a", "maxRetries": -1}, "maxRetries"),
    ({"stream": "a", "concurrencyLimit": 101}, "concurrencyLimit"),
    ({"stream": "a", "partitionBy": "type"}, "partitionBy"),
    ({"stream": "a", "startFrom": 0}, "startFrom"),
    ({"stream": "a", "startFrom": "middle"}, "startFrom"),
    ({"stream": "a", "checkpointAfterEvents": 0}, "checkpointAfterEvents"),
    ({"stream": "a", "checkpointAfterSeconds": 0}, "checkpointAfterSeconds"),
    ({"stream": "a", "colour": "red"}, "colour"),
    ({"filter": {"kind": "x"}}, "filter.kind"),
    ({"filter": {"type": [1]}}, "filter.type"),
    ({"filter": "x"}, "filter"),
    ({"filter": {"streamPrefix": "$snapshot-"}}, "filter.streamPrefix"),  # $-streams: it would never deliver
])
async def test_bad_settings_are_400_with_the_field_and_create_nothing(shared_node, http, body, field):
    name = unique("bad")
    status, error = await call(http, "PUT", f"{shared_node.url}/v1/subscriptions/{name}", body)
    assert (status, error["error"], error["field"]) == (400, "invalid_request", field)
    assert (await call(http, "GET", f"{shared_node.url}/v1/subscriptions/{name}"))[0] == 404


@pytest.mark.parametrize("name", ["-x", "a" * 129, "a b", "caf%C3%A9", "a%2Fb"])
async def test_bad_names_are_400(shared_node, http, name):
    status, error = await call(http, "PUT", f"{shared_node.url}/v1/subscriptions/{name}", {"stream": "a"})
    assert (status, error.get("field")) == (400, "name")


async def test_a_hard_deleted_stream_is_410_to_every_kind_of_subscriber(shared_node, http):
    """Its events stay in `$all` until a scavenge: a persistent subscription on it was created (201) with a lag
    that never cleared, and a transient one from a position replayed them, where one from a version got 410."""
    base, stream = shared_node.url, unique("tomb")
    await append(http, base, stream, 2)
    await call(http, "DELETE", f"{base}/v1/streams/{stream}?hard=true", status=204)
    name = unique("tomb-sub")
    status, refused = await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
                                 {"stream": stream, "startFrom": "start"})
    assert (status, refused["error"]) == (410, "stream_deleted")
    assert (await call(http, "GET", f"{base}/v1/subscriptions/{name}"))[0] == 404  # nothing was created
    for query in ("start=start", "fromVersion=1", "start=end"):
        async with http.get(f"{base}/v1/subscribe?stream={stream}&{query}",
                            headers={"Accept": "text/event-stream"}) as reply:
            assert reply.status == 410, (query, reply.status)
    other = unique("alive")  # a stream that does not exist yet is subscribed to as before
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}", {"stream": other, "startFrom": "start"}, status=201)
    await call(http, "DELETE", f"{base}/v1/subscriptions/{name}", status=204)


async def test_patch_changes_settings_and_keeps_the_checkpoint(shared_node, http):
    base, name, stream = shared_node.url, unique("patch"), unique("patched")
    await append(http, base, stream, 4)
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
               {"stream": stream, "startFrom": "start", "checkpointAfterEvents": 1}, status=201)
    got = await fetch_until(http, base, name, 4)
    await ack(http, base, name, got[:2])
    await info_until(http, base, name, lambda i: i["checkpointWritten"] == 2, "checkpoint 2 written")
    _s, patched = await call(http, "PATCH", f"{base}/v1/subscriptions/{name}", {"maxRetries": 3, "bufferSize": 2},
                             status=200)
    assert (patched["maxRetries"], patched["bufferSize"], patched["checkpoint"]) == (3, 2, 2)
    again = await fetch_until(http, base, name, 2)  # the un-acked 3 and 4 come again; 1 and 2 do not
    assert versions(again) == [3, 4]
    status, error = await call(http, "PATCH", f"{base}/v1/subscriptions/{name}", {"stream": "other"})
    assert (status, error["field"]) == (400, "stream")
    status, error = await call(http, "PATCH", f"{base}/v1/subscriptions/{name}", {"bufferSize": 0})
    assert (status, error["field"]) == (400, "bufferSize")
    assert (await info(http, base, name))["bufferSize"] == 2


# consuming over HTTP -----------------------------------------------------------------------------
async def test_head_and_lag_follow_the_stream_while_the_read_ahead_is_full(shared_node, http):
    base, name, stream = shared_node.url, unique("head"), unique("headed")
    await append(http, base, stream, 5)
    _s, created = await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
                             {"stream": stream, "startFrom": "start", "bufferSize": 2}, status=201)
    assert (created["head"], created["lag"]) == (5, 5)
    await info_until(http, base, name, lambda i: i["inFlight"] == 0 and i["head"] == 5, "read ahead 2")
    await append(http, base, stream, 3)  # the read-ahead (bufferSize 2) is full: nothing more is read
    state = await info_until(http, base, name, lambda i: i["head"] == 8, "head 8")
    assert (state["lag"], state["checkpoint"]) == (8, 0)
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    assert f'evstore_subscription_lag{{subscription="{name}"}} 8.0' in text


async def test_fetch_ack_and_the_checkpoint(shared_node, http):
    base, name, stream = shared_node.url, unique("fetch"), unique("fetched")
    await append(http, base, stream, 3)
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
               {"stream": stream, "startFrom": "start", "checkpointAfterEvents": 2}, status=201)
    got = await fetch_until(http, base, name, 3)
    assert versions(got) == [1, 2, 3] and all(d["attempt"] == 1 for d in got)
    assert got[0]["event"]["stream"] == stream and got[0]["event"]["data"] == {"i": 0}
    state = await info(http, base, name)
    assert (state["inFlight"], state["checkpoint"], state["head"], state["lag"]) == (3, 0, 3, 3)
    assert (await ack(http, base, name, [got[1]])) == {"acked": 1, "unknown": []}
    assert (await info(http, base, name))["checkpoint"] == 0  # 1 is not acked yet
    await ack(http, base, name, [got[0], got[2]])
    done = await info_until(http, base, name, lambda i: i["checkpointWritten"] == 3, "checkpoint 3 written")
    assert (done["checkpoint"], done["lag"], done["inFlight"]) == (3, 0, 0)
    assert (await ack(http, base, name, [got[0]]))["unknown"] == [got[0]["deliveryId"]]  # settled already
    await append(http, base, stream, 1)  # live: a waiting fetch gets the next event
    assert versions(await fetch_until(http, base, name, 1)) == [4]


async def test_bad_consumer_calls_are_400(shared_node, http):
    base, name = shared_node.url, unique("calls")
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}", {"stream": unique("s")}, status=201)
    for query, field in (("?max=0", "max"), ("?max=1001", "max"), ("?wait=21", "wait"), ("?wait=x", "wait"),
                         ("?consumer=a%20b", "consumer"), ("?other=1", "other")):
        status, error = await call(http, "POST", f"{base}/v1/subscriptions/{name}/fetch{query}")
        assert (status, error["field"]) == (400, field), query
    for body, field in (({"ids": []}, "ids"), ({"ids": ["x"]}, "ids[0]"), ({}, "ids"), ({"ids": ["1:2"], "x": 1}, "x")):
        status, error = await call(http, "POST", f"{base}/v1/subscriptions/{name}/ack", body)
        assert (status, error["field"]) == (400, field), body
    status, error = await call(http, "POST", f"{base}/v1/subscriptions/{name}/nack", {"ids": ["1:2"], "action": "drop"})
    assert (status, error["field"]) == (400, "action")
    for path, body in (("/fetch", {"max": 5}), ("/parked/replay", {"all": True}), ("", {"force": True})):
        method = "DELETE" if path == "" else "POST"  # a body these take not: refused, not ignored
        status, error = await call(http, method, f"{base}/v1/subscriptions/{name}{path}", body)
        assert (status, error["field"]) == (400, "body"), path
    assert (await call(http, "POST", f"{base}/v1/subscriptions/{name}/fetch", {}))[0] == 200  # {} says nothing
    assert (await info(http, base, name))["name"] == name
    status, error = await call(http, "POST", f"{base}/v1/subscriptions/{unique('none')}/fetch")
    assert (status, error["error"]) == (404, "subscription_not_found")


async def test_nack_retry_park_skip_and_parked_replay_never_moves_the_checkpoint(shared_node, http):
    """KurrentDB #1890: replayed parked events are delivered again; the checkpoint stays where it was."""
    base, name, stream = shared_node.url, unique("nack"), unique("nacked")
    await append(http, base, stream, 4)
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
               {"stream": stream, "startFrom": "start", "maxRetries": 1, "checkpointAfterEvents": 1}, status=201)
    d1, d2, d3, d4 = await fetch_until(http, base, name, 4)
    url = f"{base}/v1/subscriptions/{name}"
    assert (await call(http, "POST", url + "/nack", {"ids": [d1["deliveryId"]], "action": "retry"}, status=200)
            )[1] == {"nacked": 1, "unknown": []}
    await call(http, "POST", url + "/nack", {"ids": [d2["deliveryId"]], "action": "park"}, status=200)
    await call(http, "POST", url + "/nack", {"ids": [d3["deliveryId"]], "action": "skip"}, status=200)
    await ack(http, base, name, [d4])
    retried = await fetch_until(http, base, name, 1)
    assert versions(retried) == [1] and retried[0]["attempt"] == 2
    await call(http, "POST", url + "/nack", {"ids": [retried[0]["deliveryId"]], "action": "retry"}, status=200)
    # two failures with maxRetries 1: version 1 is parked too
    state = await info_until(http, base, name, lambda i: i["parked"] == 2 and i["checkpointWritten"] == 4,
                             "two parked, checkpoint 4")
    assert state["inFlight"] == 0
    parked = (await call(http, "GET", url + "/parked", status=200))[1]
    assert parked["total"] == 2
    assert sorted((p["version"], p["reason"]) for p in parked["events"]) == [(1, "maxRetries"), (2, "nack")]
    assert {p["event"]["version"] for p in parked["events"]} == {1, 2}
    assert (await call(http, "POST", url + "/parked/replay", status=200))[1] == {"replaying": 2, "missing": 0}
    replayed = await fetch_until(http, base, name, 2)
    assert sorted(versions(replayed)) == [1, 2] and all(d.get("replayed") for d in replayed)
    await ack(http, base, name, replayed)
    state = await info_until(http, base, name, lambda i: i["parked"] == 0 and i["replaying"] == 0, "replay done")
    assert (state["checkpoint"], state["checkpointWritten"]) == (4, 4)
    assert (await call(http, "GET", url + "/parked", status=200))[1]["total"] == 0


async def test_an_unacked_event_is_redelivered_after_ack_timeout(shared_node, http):
    base, name, stream = shared_node.url, unique("timeout"), unique("slow")
    await append(http, base, stream, 1)
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
               {"stream": stream, "startFrom": "start", "ackTimeout": 0.5}, status=201)
    first = await fetch_until(http, base, name, 1)
    again = await fetch_until(http, base, name, 1, wait=5)
    assert versions(again) == [1] and again[0]["attempt"] == 2
    assert again[0]["deliveryId"] != first[0]["deliveryId"]
    assert (await info(http, base, name))["redeliveries"] == 1


async def test_a_filter_subscription_follows_all_streams_and_skips_system_streams(shared_node, http):
    base, name, prefix = shared_node.url, unique("filter"), unique("flt")
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
               {"filter": {"streamPrefix": prefix, "type": ["Wanted"]}, "checkpointAfterEvents": 1}, status=201)
    await append(http, base, f"{prefix}-a", 2, "Wanted")
    await append(http, base, f"{prefix}-b", 2, "Unwanted")
    await append(http, base, f"{prefix}-c", 1, "Wanted")
    got = await fetch_until(http, base, name, 3)
    assert [(d["event"]["stream"], d["event"]["type"]) for d in got] == [
        (f"{prefix}-a", "Wanted"), (f"{prefix}-a", "Wanted"), (f"{prefix}-c", "Wanted")]
    await ack(http, base, name, got)
    # scanned positions that did not match (its own checkpoints included) move it further
    state = await info_until(http, base, name, lambda i: i["checkpoint"] >= got[-1]["event"]["position"],
                             "the checkpoint past the last event")
    assert state["checkpoint"] <= state["head"]
    assert await fetch(http, base, name, wait=0.3) == []  # its own checkpoint events are not delivered


# restarts and the KurrentDB failures -------------------------------------------------------------
async def test_a_restart_resumes_at_the_oldest_unacked_event(node, http):
    """KurrentDB #1301: the checkpoint is never ahead of an un-acked event, so a crash skips nothing."""
    base, name, stream = node.url, unique("restart"), unique("crash")
    await append(http, base, stream, 10)
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
               {"stream": stream, "startFrom": "start", "checkpointAfterEvents": 1}, status=201)
    got = await fetch_until(http, base, name, 10)
    await ack(http, base, name, [d for d in got if d["event"]["version"] != 4])
    state = await info_until(http, base, name, lambda i: i["checkpointWritten"] == 3, "checkpoint 3 written")
    assert state["checkpoint"] == 3  # 5..10 are acked, but 4 is not
    node.kill()
    node.restart()
    after = await fetch_until(http, base, name, 7)
    assert versions(after) == [4, 5, 6, 7, 8, 9, 10]  # nothing before the un-acked 4, 4 itself first
    await ack(http, base, name, after)
    await info_until(http, base, name, lambda i: i["checkpointWritten"] == 10, "checkpoint 10 written")
    node.terminate()
    node.restart()
    assert await fetch(http, base, name, wait=0.5) == []
    assert (await info(http, base, name))["checkpoint"] == 10


async def test_parked_events_and_definitions_survive_a_restart(node, http):
    base, name, stream = node.url, unique("kept"), unique("kept")
    await append(http, base, stream, 2)
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}", {"stream": stream, "startFrom": "start"}, status=201)
    got = await fetch_until(http, base, name, 2)
    await call(http, "POST", f"{base}/v1/subscriptions/{name}/nack", {"ids": [got[0]["deliveryId"]],
                                                                       "action": "park"}, status=200)
    await info_until(http, base, name, lambda i: i["parked"] == 1, "one parked")
    metadata = (await call(http, "GET", f"{base}/v1/streams/$sub-{name}-parked/metadata", status=200))[1]
    assert metadata["maxCount"] == 10_000
    assert (await call(http, "GET", f"{base}/v1/streams/$sub-{name}-checkpoint/metadata", status=200)
            )[1]["maxCount"] == 10
    node.kill()
    node.restart()
    state = await info(http, base, name)
    assert state["parked"] == 1 and state["stream"] == stream
    assert versions(await fetch_until(http, base, name, 1)) == [2]  # the parked 1 is not delivered again


async def test_a_checkpoint_at_a_truncated_event_keeps_going(node, http):
    """KurrentDB #3449: the events after the checkpoint were removed (maxCount, then a scavenge)."""
    base, name, stream = node.url, unique("gone"), unique("gone")
    await append(http, base, stream, 3)
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
               {"stream": stream, "startFrom": "start", "checkpointAfterEvents": 1, "bufferSize": 3}, status=201)
    await ack(http, base, name, await fetch_until(http, base, name, 3))
    await info_until(http, base, name, lambda i: i["checkpointWritten"] == 3, "checkpoint 3")
    node.kill()
    node.restart()
    await append(http, base, stream, 7)  # versions 4..10, then only the last two are kept
    await call(http, "PUT", f"{base}/v1/streams/{stream}/metadata", {"maxCount": 2}, status=200)
    await call(http, "POST", f"{base}/v1/admin/scavenge", status=200)
    node.kill()
    node.restart()
    after = await fetch_until(http, base, name, 2)
    assert versions(after)[-2:] == [9, 10]
    await ack(http, base, name, after)
    await info_until(http, base, name, lambda i: i["checkpoint"] == 10, "checkpoint 10")


async def test_delete_and_create_again_starts_afresh(shared_node, http):
    base, name, stream = shared_node.url, unique("again"), unique("again")
    await append(http, base, stream, 2)
    url = f"{base}/v1/subscriptions/{name}"
    await call(http, "PUT", url, {"stream": stream, "startFrom": "start", "checkpointAfterEvents": 1}, status=201)
    await ack(http, base, name, await fetch_until(http, base, name, 2))
    await info_until(http, base, name, lambda i: i["checkpointWritten"] == 2, "checkpoint 2")
    await call(http, "DELETE", url, status=204)
    await call(http, "PUT", url, {"stream": stream, "startFrom": "start"}, status=201)
    assert versions(await fetch_until(http, base, name, 2)) == [1, 2]


# WebSocket consumers -----------------------------------------------------------------------------
async def receive_events(ws, count: int) -> list[dict]:
    got: list[dict] = []
    while len(got) < count:
        message = await ws.receive_json(timeout=WAIT)
        assert "events" in message, message
        got += message["events"]
    return got


async def test_websocket_consumers_compete_round_robin_and_the_limit_holds(shared_node, http):
    base, name, stream = shared_node.url, unique("ws"), unique("wsstream")
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
               {"stream": stream, "concurrencyLimit": 2, "bufferSize": 50}, status=201)
    url = f"{base}/v1/subscriptions/{name}/connect"
    async with http.ws_connect(url) as a, http.ws_connect(url) as b:
        await info_until(http, base, name, lambda i: i["consumers"] == 2, "two consumers")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with http.ws_connect(url):
                pass
        assert refused.value.status == 409
        await append(http, base, stream, 10)
        events_a, events_b = await _drain(a), await _drain(b)
        await a.send_json({"ack": [e["deliveryId"] for e in events_a]})
        await b.send_json({"ack": [e["deliveryId"] for e in events_b]})
        await info_until(http, base, name, lambda i: i["checkpoint"] == 10, "all acked")
    assert sorted(versions(events_a) + versions(events_b)) == list(range(1, 11))
    assert events_a and events_b


async def _drain(ws, quiet: float = 0.5) -> list[dict]:
    got: list[dict] = []
    while True:
        try:
            message = await ws.receive_json(timeout=quiet)
        except asyncio.TimeoutError:
            return got
        got += message["events"]


async def test_websocket_bad_messages_get_an_error_and_the_connection_stays(shared_node, http):
    base, name, stream = shared_node.url, unique("wsbad"), unique("wsbad")
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}", {"stream": stream, "startFrom": "start"},
               status=201)
    async with http.ws_connect(f"{base}/v1/subscriptions/{name}/connect") as ws:
        for message, field in (("not json", "message"), ('{"ack": "x"}', "ack"), ('{"nack": ["1:1"], "action": "x"}',
                                                                                   "action"), ('{}', "message")):
            await ws.send_str(message)
            reply = await ws.receive_json(timeout=WAIT)
            assert (reply["error"], reply["field"]) == ("invalid_request", field)
        await append(http, base, stream, 1)
        (delivery,) = await receive_events(ws, 1)
        await ws.send_json({"nack": [delivery["deliveryId"]], "action": "retry"})
        (again,) = await receive_events(ws, 1)
        assert again["attempt"] == 2
        await ws.send_json({"ack": [again["deliveryId"]]})
        await info_until(http, base, name, lambda i: i["checkpoint"] == 1, "acked")
        await call(http, "DELETE", f"{base}/v1/subscriptions/{name}", status=204)
        closing = await ws.receive_json(timeout=WAIT)
        assert closing["error"] == "subscription_deleted"
        assert (await ws.receive(timeout=WAIT)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 1000


async def test_partition_by_stream_keeps_each_stream_with_one_consumer_in_order(shared_node, http):
    base, name, prefix = shared_node.url, unique("part"), unique("part")
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
               {"filter": {"streamPrefix": prefix}, "partitionBy": "stream", "concurrencyLimit": 3,
                "bufferSize": 100}, status=201)
    url = f"{base}/v1/subscriptions/{name}/connect"
    streams = [f"{prefix}-{i}" for i in range(4)]
    async with http.ws_connect(url) as a, http.ws_connect(url) as b, http.ws_connect(url) as c:
        await info_until(http, base, name, lambda i: i["consumers"] == 3, "three consumers")
        for round_ in range(5):
            for stream in streams:
                await call(http, "POST", f"{base}/v1/streams/{stream}",
                           {"events": [{"type": "T", "data": {"round": round_}}]}, status=200)
        received = {"a": await _drain(a, 1.0), "b": await _drain(b, 1.0), "c": await _drain(c, 1.0)}
        owners: dict[str, set] = {}
        for consumer, deliveries in received.items():
            for stream in streams:
                mine = [d["event"]["version"] for d in deliveries if d["event"]["stream"] == stream]
                assert mine == sorted(mine)
                if mine:
                    owners.setdefault(stream, set()).add(consumer)
        # nothing was acked, so each stream stayed with the consumer that got its first event
        assert all(len(holders) == 1 for holders in owners.values()), owners
        assert sum(len(d) for d in received.values()) == 20
        for ws, deliveries in ((a, received["a"]), (b, received["b"]), (c, received["c"])):
            if deliveries:
                await ws.send_json({"ack": [d["deliveryId"] for d in deliveries]})
        await info_until(http, base, name, lambda i: i["inFlight"] == 0, "all acked")


async def test_metrics_show_each_subscription(shared_node, http):
    base, stream = shared_node.url, unique("metered")
    held, retried = unique("held"), unique("retried")
    await append(http, base, stream, 3)
    await call(http, "PUT", f"{base}/v1/subscriptions/{held}", {"stream": stream, "startFrom": "start"},
               status=201)
    await call(http, "PUT", f"{base}/v1/subscriptions/{retried}", {"stream": stream, "startFrom": "start",
                                                                   "ackTimeout": 0.2}, status=201)
    await fetch_until(http, base, held, 3)  # held, not acked
    await fetch_until(http, base, retried, 3)
    await fetch_until(http, base, retried, 3, wait=5)  # delivered again after the ack timeout
    async with http.get(f"{base}/metrics") as reply:
        text = await reply.text()
    assert f'evstore_subscription_in_flight{{subscription="{held}"}} 3.0' in text
    assert f'evstore_subscription_lag{{subscription="{held}"}} 3.0' in text
    assert f'evstore_subscription_parked{{subscription="{held}"}} 0.0' in text
    assert f'evstore_subscription_consumers{{subscription="{held}"}} 1.0' in text
    redelivered = next(line for line in text.splitlines()
                       if line.startswith(f'evstore_subscription_redeliveries_total{{subscription="{retried}"}}'))
    assert float(redelivered.split()[-1]) >= 3

async def test_consuming_needs_the_write_role(node_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("reader-0123456789abcdef read\nwriter-0123456789abcdef write\n")
    node = node_factory("auth", args=("--api-tokens-file", str(tokens)))
    reader = {"Authorization": "Bearer reader-0123456789abcdef"}
    writer = {"Authorization": "Bearer writer-0123456789abcdef"}
    async with aiohttp.ClientSession() as http:
        url = f"{node.url}/v1/subscriptions/guarded"
        async with http.put(url, json={"stream": "g"}, headers=reader) as reply:
            assert reply.status == 403
        async with http.put(url, json={"stream": "g"}, headers=writer) as reply:
            assert reply.status == 201
        async with http.get(url, headers=reader) as reply:
            assert reply.status == 200
        async with http.post(url + "/fetch", headers=reader) as reply:
            assert reply.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with http.ws_connect(url + "/connect", headers=reader):
                pass
        assert refused.value.status == 403
        async with http.ws_connect(url + "/connect", headers=writer) as ws:
            await ws.send_str("{}")
            assert (await ws.receive_json(timeout=WAIT))["error"] == "invalid_request"


async def test_sigterm_closes_consumers_at_once_and_writes_the_final_checkpoint(node, http):
    base, name, stream = node.url, unique("term"), unique("term")
    await append(http, base, stream, 5)
    await call(http, "PUT", f"{base}/v1/subscriptions/{name}",
               {"stream": stream, "startFrom": "start", "bufferSize": 3, "checkpointAfterSeconds": 3600},
               status=201)
    async with http.ws_connect(f"{base}/v1/subscriptions/{name}/connect") as ws:
        got = await receive_events(ws, 3)
        await ws.send_json({"ack": [d["deliveryId"] for d in got]})
        await info_until(http, base, name, lambda i: i["checkpoint"] == 3, "checkpoint 3 (not written yet)")
        stopping = asyncio.get_running_loop().run_in_executor(None, node.terminate)
        while True:  # events 4 and 5 may come first
            message = await ws.receive_json(timeout=WAIT)
            if "error" in message:
                break
        assert message["error"] == "shutting_down"
        assert (await ws.receive(timeout=WAIT)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1001
        assert await stopping == 0  # a clean exit, without waiting for the consumer to go
    node.restart()
    state = await info(http, base, name)
    assert (state["checkpoint"], state["checkpointWritten"]) == (3, 3)
    assert versions(await fetch_until(http, base, name, 2)) == [4, 5]
