"""Transient subscriptions (GET /v1/subscribe) over real SSE and WebSocket connections to real node
processes: selectors, starts, catch-up then live with nothing skipped or repeated at the switch (raced many
times), heartbeats and Last-Event-ID resumes, `$`-streams, slow consumers, limits, auth, metrics, shutdown."""
from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from subhelpers import collect, positions, sse, subscriber, websocket

WAIT = 30.0
KINDS = ("sse", "ws")


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=WAIT)) as session:
        yield session


async def append(http, url: str, stream: str, events: list[dict], headers=None) -> dict:
    async with http.post(f"{url}/v1/streams/{stream}", json={"events": events}, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def get(http, url: str, path: str, params=None, headers=None) -> tuple[int, dict]:
    async with http.get(url + path, params=params, headers=headers) as resp:
        return resp.status, await resp.json()


def ev(event_type: str = "T", **data) -> dict:
    return {"type": event_type, "data": data}


async def metric(http, url: str, name: str) -> float:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


# -- catch-up then live ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_catch_up_then_live_with_events_shaped_as_reads(node, http, kind):
    for i in range(5):
        await append(http, node.url, f"order-{i % 2}", [ev("Placed", i=i)])
    async with subscriber(kind)(http, node.url, {"start": "start"}) as messages:
        replay = await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
        assert replay[-1] == {"caughtUp": True, "position": 5}
        _, page = await get(http, node.url, "/v1/all")
        assert [m["event"] for m in replay[:-1]] == page["events"]  # the same JSON as reads
        await append(http, node.url, "order-9", [ev("Shipped"), ev("Shipped")])
        live = await asyncio.wait_for(collect(messages, until_position=7), WAIT)
        assert positions(live) == [6, 7] and live[0]["event"]["stream"] == "order-9"


async def test_sse_ids_are_positions_and_heartbeats_are_named(node, http):
    await append(http, node.url, "s", [ev()])
    async with sse(http, node.url, {"start": "start", "heartbeat": "1"}) as messages:
        seen = []
        async for name, event_id, data in messages:
            seen.append((name, event_id, data))
            if name == "heartbeat":
                break
    assert seen[0][0] == "message" and seen[0][1] == "1" and seen[0][2]["event"]["position"] == 1
    assert seen[1] == ("message", "1", {"caughtUp": True, "position": 1})
    assert seen[2] == ("heartbeat", "1", {"heartbeat": True, "position": 1})


# -- selectors ---------------------------------------------------------------------------------------

@pytest.fixture
async def mixed_log(node, http):
    """A log with several streams, types and payloads (and a metadata event in `$$order-1`)."""
    await append(http, node.url, "order-1", [ev("OrderPlaced", customer={"tier": "gold", "id": 1}, items=[1, 2]),
                                             ev("OrderShipped", carrier="x")])
    await append(http, node.url, "order-2", [ev("OrderPlaced", customer={"tier": "silver"}, items=[2])])
    await append(http, node.url, "user-1", [ev("UserJoined", customer={"tier": "gold"})])
    async with http.put(f"{node.url}/v1/streams/order-1/metadata", json={"maxCount": 10}) as resp:
        assert resp.status == 200
    await append(http, node.url, "order-[3]", [ev("OrderPlaced", total=9.40)])
    return node


SELECTOR_CASES = [
    ({}, [1, 2, 3, 4, 6]),
    ({"stream": "order-1"}, [1, 2]),
    ({"stream": "order-[3]"}, [6]),  # GLOB characters in a stream name are literal
    ({"type": ["OrderShipped", "UserJoined"]}, [2, 4]),
    ({"typePrefix": "Order"}, [1, 2, 3, 6]),
    ({"streamPrefix": "order-"}, [1, 2, 3, 6]),
    ({"streamPattern": "order-[0-9]"}, [1, 2, 3]),
    ({"payload": json.dumps({"customer": {"tier": "gold"}})}, [1, 4]),
    ({"payload": json.dumps({"items": [2]})}, [1, 3]),
    ({"payload": json.dumps({"total": 9.4})}, [6]),
    ({"includeSystem": "true"}, [1, 2, 3, 4, 5, 6]),
    ({"stream": "$$order-1"}, [5]),  # naming a system stream includes it
    ({"streamPrefix": "$$"}, [5]),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("params, expected", SELECTOR_CASES, ids=[str(c[0]) for c in SELECTOR_CASES])
async def test_selectors(mixed_log, http, kind, params, expected):
    query = [(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])]
    async with subscriber(kind)(http, mixed_log.url, [*query, ("start", "start")]) as messages:
        replay = await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
    assert positions(replay) == expected and replay[-1] == {"caughtUp": True, "position": 6}
    # live delivery applies the same selector
    async with subscriber(kind)(http, mixed_log.url, [*query, ("fromPosition", "1")]) as messages:
        live = await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
    assert positions(live) == expected


async def test_filtered_all_reads_agree_with_subscription_selectors(mixed_log, http):
    for params in ({"type": "OrderShipped"}, {"typePrefix": "Order"}, {"streamPrefix": "order-"},
                   {"streamPattern": "order-[0-9]"}, {}, {"includeSystem": "true"}):
        _, page = await get(http, mixed_log.url, "/v1/all", params)
        async with sse(http, mixed_log.url, {**params, "start": "start"}) as messages:
            replay = await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
        assert positions(replay) == [e["position"] for e in page["events"]], params


async def test_all_reads_leave_out_system_streams_unless_asked(mixed_log, http):
    _, page = await get(http, mixed_log.url, "/v1/all")
    assert [e["position"] for e in page["events"]] == [1, 2, 3, 4, 6] and page["head"] == 6
    _, page = await get(http, mixed_log.url, "/v1/all", {"includeSystem": "true"})
    assert [e["position"] for e in page["events"]] == [1, 2, 3, 4, 5, 6]
    assert page["events"][4]["stream"] == "$$order-1"
    _, page = await get(http, mixed_log.url, "/v1/all", {"streamPrefix": "$$"})
    assert [e["position"] for e in page["events"]] == [5]
    _, page = await get(http, mixed_log.url, "/v1/all", {"direction": "backward", "limit": "2"})
    assert [e["position"] for e in page["events"]] == [6, 4]
    status, error = await get(http, mixed_log.url, "/v1/all", {"includeSystem": "yes"})
    assert status == 400 and error["field"] == "includeSystem"


# -- starts ------------------------------------------------------------------------------------------

async def test_start_positions(node, http):
    for i in range(3):
        await append(http, node.url, "a", [ev(i=i)])
        await append(http, node.url, "b", [ev(i=i)])
    # positions: a 1,3,5  b 2,4,6
    cases = [({"fromPosition": "4"}, [4, 5, 6]), ({"fromPosition": "6"}, [6]), ({"fromPosition": "60"}, []),
             ({"stream": "a", "fromVersion": "2"}, [3, 5]), ({"stream": "a", "fromVersion": "9"}, []),
             ({"stream": "nothing-yet", "fromVersion": "1"}, []), ({"start": "start", "stream": "b"}, [2, 4, 6])]
    for params, expected in cases:
        async with sse(http, node.url, params) as messages:
            replay = await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
        assert positions(replay) == expected, params
    # the default is the end: only what commits after subscribing
    async with sse(http, node.url, {"stream": "nothing-yet", "fromVersion": "1"}) as later:
        async with sse(http, node.url) as messages:
            first = await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
            assert first == [{"caughtUp": True, "position": 6}]
            await append(http, node.url, "nothing-yet", [ev(), ev()])
            assert positions(await asyncio.wait_for(collect(messages, until_position=8), WAIT)) == [7, 8]
        got = await asyncio.wait_for(collect(later, until_position=8), WAIT)
        assert positions(got) == [7, 8] and got[0] == {"caughtUp": True, "position": 6}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_version_past_the_stream_end_delivers_only_that_version_on(node, http, kind):
    await append(http, node.url, "short", [ev(i=1)])
    async with subscriber(kind)(http, node.url, {"stream": "short", "fromVersion": "3"}) as messages:
        assert await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT) == [
            {"caughtUp": True, "position": 1}]
        await append(http, node.url, "short", [ev(i=2), ev(i=3)])
        await append(http, node.url, "short", [ev(i=4)])
        got = await asyncio.wait_for(collect(messages, until_position=4), WAIT)
    assert [m["event"]["version"] for m in got] == [3, 4]
    async with subscriber(kind)(http, node.url, {"stream": "not-yet", "fromVersion": "2"}) as messages:
        await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
        await append(http, node.url, "not-yet", [ev(i=1), ev(i=2), ev(i=3)])
        got = await asyncio.wait_for(collect(messages, until_position=7), WAIT)
    assert [m["event"]["version"] for m in got] == [2, 3]
    # a resume (Last-Event-ID: the heartbeat's position) keeps the URL's start version
    await append(http, node.url, "resumed", [ev(i=1)])  # position 8
    resume = {"Last-Event-ID": "8"}
    async with sse(http, node.url, {"stream": "resumed", "fromVersion": "3"}, headers=resume) as messages:
        await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
        await append(http, node.url, "resumed", [ev(i=2), ev(i=3)])
        got = await asyncio.wait_for(collect(messages, until_position=10), WAIT)
    assert [m["event"]["version"] for m in got] == [3]


async def test_last_event_id_resumes_after_it_and_overrides_the_start(node, http):
    for i in range(6):
        await append(http, node.url, "r", [ev(i=i)])
    async with sse(http, node.url, {"stream": "r", "fromVersion": "1"}, headers={"Last-Event-ID": "3"}) as messages:
        replay = await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
    assert positions(replay) == [4, 5, 6]
    async with sse(http, node.url, {"start": "end"}, headers={"Last-Event-ID": "0"}) as messages:
        replay = await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
    assert positions(replay) == [1, 2, 3, 4, 5, 6]


async def test_heartbeats_carry_the_scanned_position_so_a_filtered_reconnect_does_not_rescan(node, http):
    await append(http, node.url, "hb", [ev("Wanted")])
    async with sse(http, node.url, {"type": "Wanted", "start": "start", "heartbeat": "1"}) as messages:
        replay = await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
        assert positions(replay) == [1]
        for _ in range(10):
            await append(http, node.url, "hb", [ev("Other") for _ in range(20)])
        async for name, event_id, data in messages:
            assert name == "heartbeat"
            if data["position"] == 201:
                break
        assert event_id == "201"
    # a reconnect with the heartbeat's id starts after it: nothing before is scanned (or delivered) again
    async with sse(http, node.url, {"type": "Wanted", "start": "start"}, headers={"Last-Event-ID": "201"}
                   ) as messages:
        assert await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT) == [
            {"caughtUp": True, "position": 201}]
    async with sse(http, node.url, {"type": "Wanted"}, headers={"Last-Event-ID": "0"}) as messages:
        assert positions(await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)) == [1]


# -- no skip, no repeat at the switch ----------------------------------------------------------------

SWITCH_ROUNDS = 50


async def test_no_event_is_skipped_or_repeated_between_replay_and_live(node, http):
    """Each round: appends race a subscriber that starts from the start; it must see exactly 1..head."""
    head = 0
    for round_ in range(SWITCH_ROUNDS):
        kind = KINDS[round_ % 2]

        async def writer() -> int:
            last = 0
            for i in range(20):
                last = (await append(http, node.url, f"race-{round_ % 3}", [ev(i=i)] * random.choice((1, 3))))[
                    "position"]
            return last

        writing = asyncio.create_task(writer())
        await asyncio.sleep(random.random() * 0.05)
        async with subscriber(kind)(http, node.url, {"start": "start"}) as messages:
            got: list[dict] = []
            async for _kind, _id, data in messages:
                if "event" in data or "caughtUp" in data:
                    got.append(data)
                seen = positions(got)
                if writing.done() and seen and seen[-1] >= writing.result() and any("caughtUp" in m for m in got):
                    break
        head = await writing
        assert positions(got) == list(range(1, head + 1)), f"round {round_} ({kind})"
        assert sum(1 for m in got if "caughtUp" in m) == 1


async def test_sse_resume_with_last_event_id_under_concurrent_appends(node, http):
    """Disconnect at a random point and resume with Last-Event-ID, while appends go on: 1..head exactly."""
    for round_ in range(SWITCH_ROUNDS):
        async def writer() -> int:
            last = 0
            for i in range(20):
                last = (await append(http, node.url, "resume", [ev(i=i)] * random.choice((1, 2))))["position"]
            return last

        writing = asyncio.create_task(writer())
        got: list[int] = []
        last_id = None
        cut = random.randint(0, 30)
        params = {"start": "start", "streamPrefix": "res"}
        for attempt in (1, 2):
            headers = {"Last-Event-ID": last_id} if last_id is not None else None
            async with sse(http, node.url, params, headers=headers) as messages:
                async for _name, event_id, data in messages:
                    last_id = event_id if event_id is not None else last_id
                    if "event" in data:
                        got.append(data["event"]["position"])
                    if attempt == 1 and len(got) >= cut:
                        break
                    if writing.done() and got and got[-1] >= writing.result():
                        break
            if writing.done() and got and got[-1] >= writing.result():
                break
        head = await writing
        assert got == list(range(1, head + 1)), f"round {round_}: cut after {cut}"



# -- slow consumers ----------------------------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_stalled_consumer_costs_a_bounded_buffer_and_later_gets_every_event_in_order(node, http):
    payload = "x" * 4000

    async def append_80_mb() -> None:
        for batch in range(200):
            await append(http, node.url, f"slow-{batch % 4}", [ev(p=payload) for _ in range(100)])

    async with sse(http, node.url, {"streamPrefix": "slow"}) as messages:
        assert await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT) == [
            {"caughtUp": True, "position": 0}]
        before = rss_bytes(node.pid)
        await append_80_mb()  # the consumer reads nothing meanwhile
        middle = rss_bytes(node.pid)
        await append_80_mb()
        after = rss_bytes(node.pid)
        print(f"node RSS with a stalled consumer: {before >> 20} MiB, after 80 MB appended {middle >> 20} MiB, "
              f"after 160 MB {after >> 20} MiB")
        # bounded: the second 80 MB cost (next to) nothing; the first one includes SQLite's caches (about
        # 24 MiB measured without any subscriber) besides one subscriber buffer (BUFFER_BYTES, 8 MiB)
        assert after - middle < 8 << 20 and after - before < 64 << 20
        assert await metric(http, node.url, "evstore_subscriber_overflows_total") >= 1
        got = await asyncio.wait_for(collect(messages, until_position=40_000), 120)
    assert positions(got) == list(range(1, 40_001))


# -- errors, limits, auth ------------------------------------------------------------------------------

BAD = [
    ({"stream": "a", "type": "T"}, "type"), ({"typePrefix": "A", "streamPattern": "*"}, "streamPattern"),
    ({"fromPosition": "1", "start": "start"}, "start"), ({"fromVersion": "1"}, "fromVersion"),
    ({"stream": "a", "fromVersion": "1", "fromPosition": "2"}, "fromPosition"), ({"fromPosition": "0"}, "fromPosition"),
    ({"start": "middle"}, "start"), ({"payload": "[1]"}, "payload"), ({"payload": "{"}, "payload"),
    ({"payload": '{"a":' * 40 + "1" + "}" * 40}, "payload"), ({"heartbeat": "0"}, "heartbeat"),
    ({"heartbeat": "61"}, "heartbeat"), ({"includeSystem": "1"}, "includeSystem"), ({"bogus": "1"}, "bogus"),
    ({"stream": "\x07"}, "stream"), ({"type": ""}, "type"), ({"from": "1"}, "from"),
]


@pytest.mark.parametrize("params, field", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
async def test_bad_parameters_are_400_before_the_stream_starts(shared_node, http, params, field):
    async with http.get(shared_node.url + "/v1/subscribe", params=params,
                        headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 400 and resp.content_type == "application/json"
        body = await resp.json()
    assert body["error"] == "invalid_request" and body["field"] == field, body


async def test_bad_last_event_id_and_a_plain_get_are_400_and_a_hard_deleted_stream_410(shared_node, http):
    status, body = await get(http, shared_node.url, "/v1/subscribe", headers={"Accept": "text/event-stream",
                                                                                "Last-Event-ID": "x1"})
    assert status == 400 and body["field"] == "Last-Event-ID"
    status, body = await get(http, shared_node.url, "/v1/subscribe")
    assert status == 400 and body["field"] == "Accept"
    async with http.head(shared_node.url + "/v1/subscribe", headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 405
    await append(http, shared_node.url, "gone", [ev()])
    async with http.delete(shared_node.url + "/v1/streams/gone", params={"hard": "true"}) as resp:
        assert resp.status == 204
    status, body = await get(http, shared_node.url, "/v1/subscribe", {"stream": "gone", "fromVersion": "1"},
                             headers={"Accept": "text/event-stream"})
    assert status == 410 and body["error"] == "stream_deleted"


async def test_subscriber_limit_is_503_and_the_gauge_counts(node_factory, http):
    node = node_factory("limited", args=("--max-subscribers", "2"))
    # a long heartbeat: a closed SSE subscriber frees its place when it goes, not at its next heartbeat
    async with sse(http, node.url, {"heartbeat": "60"}) as one, websocket(http, node.url) as two:
        await asyncio.wait_for(collect(one, until_caught_up=True), WAIT)
        await asyncio.wait_for(collect(two, until_caught_up=True), WAIT)
        assert await metric(http, node.url, "evstore_subscribers") == 2
        status, body = await get(http, node.url, "/v1/subscribe", headers={"Accept": "text/event-stream"})
        assert status == 503 and body["error"] == "unavailable" and body["reason"] == "too_many_subscribers"
        assert body["retryAfter"] > 0
    deadline = time.monotonic() + WAIT
    while await metric(http, node.url, "evstore_subscribers") != 0:  # the node sees the disconnects
        assert time.monotonic() < deadline, "closed subscribers still counted"
        await asyncio.sleep(0.1)
    async with sse(http, node.url) as again:
        assert await asyncio.wait_for(collect(again, until_caught_up=True), WAIT)


async def test_live_delivery_latency_is_observed(node, http):
    async with sse(http, node.url) as messages:
        await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
        await append(http, node.url, "lat", [ev(), ev()])
        await asyncio.wait_for(collect(messages, until_position=2), WAIT)
        # one observation per group commit delivered: the two events of one append share it
        assert await metric(http, node.url, "evstore_subscription_delivery_latency_seconds_count") == 1


READ_TOKEN, WRITE_TOKEN = "r" * 20, "w" * 20


async def test_auth_bearer_or_a_short_lived_subscription_token(node_factory, http, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{READ_TOKEN} read\n{WRITE_TOKEN} write\n")
    node = node_factory("auth", args=("--api-tokens-file", str(tokens)))
    sse_headers = {"Accept": "text/event-stream"}
    status, body = await get(http, node.url, "/v1/subscribe", headers=sse_headers)
    assert status == 401 and body["error"] == "unauthorized"
    await append(http, node.url, "secret", [ev()], headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
    bearer = {"Authorization": f"Bearer {READ_TOKEN}"}
    async with sse(http, node.url, {"start": "start"}, headers=bearer) as messages:
        assert positions(await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)) == [1]
    async with http.post(node.url + "/v1/subscribe/token") as resp:
        assert resp.status == 401
    async with http.post(node.url + "/v1/subscribe/token", params={"ttl": "60"}, headers=bearer) as resp:
        assert resp.status == 200
        issued = await resp.json()
        assert resp.cookies["evstore_subscribe_token"].value == issued["token"]
        assert resp.cookies["evstore_subscribe_token"]["path"] == "/v1/subscribe"
    assert issued["expiresIn"] == 60 and issued["expires"].endswith("Z")
    token = issued["token"]
    async with sse(http, node.url, {"start": "start", "access_token": token}) as messages:  # as EventSource would
        assert positions(await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)) == [1]
    async with aiohttp.ClientSession(cookies={"evstore_subscribe_token": token}) as browser:
        async with sse(browser, node.url, {"start": "start"}) as messages:
            assert positions(await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)) == [1]
    # for subscriptions only, and only while valid and untampered
    assert (await get(http, node.url, "/v1/all", {"access_token": token}))[0] == 401
    assert (await get(http, node.url, "/v1/all", headers={"Cookie": f"evstore_subscribe_token={token}"}))[0] == 401
    expires, signature = token.split(".")
    for forged in (f"{int(expires) + 10}.{signature}", f"{expires}.{signature[:-2]}xx", "1.abc", "garbage"):
        status, _ = await get(http, node.url, "/v1/subscribe", {"access_token": forged}, headers=sse_headers)
        assert status == 401, forged
    async with http.post(node.url + "/v1/subscribe/token", params={"ttl": "5"}, headers=bearer) as resp:
        assert resp.status == 400 and (await resp.json())["field"] == "ttl"


async def test_shutdown_tells_subscribers_where_to_resume_and_does_not_wait_for_them(node, http):
    await append(http, node.url, "bye", [ev(), ev()])
    async with sse(http, node.url, {"start": "start"}) as messages, \
            websocket(http, node.url, {"start": "start"}) as frames, \
            sse(http, node.url, {"stream": "stall"}) as stalled:
        await asyncio.wait_for(collect(messages, until_caught_up=True), WAIT)
        await asyncio.wait_for(collect(frames, until_caught_up=True), WAIT)
        await asyncio.wait_for(collect(stalled, until_caught_up=True), WAIT)
        for _ in range(40):  # about 16 MB the third subscriber never reads: its sends block
            await append(http, node.url, "stall", [ev(p="y" * 4000) for _ in range(100)])
        await append(http, node.url, "bye", [ev()])
        await asyncio.wait_for(collect(messages, until_position=4003), WAIT)
        await asyncio.wait_for(collect(frames, until_position=4003), WAIT)
        started = time.monotonic()
        node.signal(signal.SIGTERM)
        sse_last = ws_last = None
        async for name, event_id, data in messages:
            sse_last = (name, event_id, data)
        async for kind, _id, data in frames:
            ws_last = (kind, data)
        assert node.wait_exit(WAIT) == 0 and time.monotonic() - started < 10
    assert sse_last[0] == "closed" and sse_last[1] == "4003" and sse_last[2]["reason"] == "shutting_down"
    assert sse_last[2]["position"] == 4003
    assert ws_last == ("error", sse_last[2])


async def test_the_client_library_follows_a_node_across_its_restart(node, http):
    """evstore.client's subscribe() resumes with Last-Event-ID after the node's shutdown message: each event
    once, in order, across a restart."""
    from evstore.client import AsyncEvstoreClient

    async with AsyncEvstoreClient(node.url) as client:
        async with client.subscribe(start="start", reconnect_timeout=WAIT) as subscription:
            await append(http, node.url, "follow", [ev(i=i) for i in range(5)])
            got = [(await asyncio.wait_for(anext(subscription), WAIT))["position"] for _ in range(5)]
            assert node.terminate() == 0
            await asyncio.to_thread(node.restart)
            await append(http, node.url, "follow", [ev(i=i) for i in range(5, 8)])
            got += [(await asyncio.wait_for(anext(subscription), WAIT))["position"] for _ in range(3)]
            assert subscription.reconnects >= 1
    assert got == list(range(1, 9))


@pytest.mark.parametrize("kind", KINDS)
async def test_a_corrupt_record_ends_the_stream_with_an_error_and_the_resume_position(node, http, kind):
    marker = "needle-7d2a-subscribe"
    await append(http, node.url, "c", [ev(i=1), ev(i=2)])
    await append(http, node.url, "c", [{"type": "T", "data": marker}])
    assert node.terminate() == 0  # a clean stop checkpoints the WAL into evstore.db
    db = node.data_dir / "evstore.db"
    blob = bytearray(db.read_bytes())
    blob[blob.find(marker.encode()) + 3] ^= 0x01
    db.write_bytes(bytes(blob))
    await asyncio.to_thread(node.restart)
    async with subscriber(kind)(http, node.url, {"start": "start"}) as messages:
        got = [(name, data) async for name, _id, data in messages]
    name, error = got[-1]
    assert name == "error" and error["error"] == "unavailable" and error["reason"] == "checksum_mismatch"
    # a resume point: everything up to it was delivered (a read page holding the bad record fails whole)
    assert error["position"] < 3 and positions([data for _name, data in got]) == list(range(1, error["position"] + 1))
