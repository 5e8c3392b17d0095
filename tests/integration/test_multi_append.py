"""POST /v1/streams, the atomic append to several streams, over real HTTP against a real node."""
from __future__ import annotations

import base64
import uuid

import aiohttp
import pytest

from httphelpers import call


@pytest.fixture(scope="module")
def url(shared_node):
    return shared_node.url


@pytest.fixture
async def http(url):
    async with aiohttp.ClientSession(base_url=url) as session:
        yield session


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def event(event_type: str = "Happened", **fields) -> dict:
    return {"id": str(uuid.uuid4()), "type": event_type, **fields}


async def head(http) -> int:
    return (await call(http, "GET", "/v1/all", params={"limit": "1", "includeSystem": "true"}))[1]["head"]


async def test_appends_to_several_streams_at_contiguous_positions(http):
    a, b = name("order"), name("stock")
    await call(http, "POST", f"/v1/streams/{a}", json={"events": [event()]})
    status, reply = await call(http, "POST", "/v1/streams", json={"appends": [
        {"stream": a, "expectedVersion": 1, "events": [event("Shipped", data={"n": 12345678901234567890})]},
        {"stream": b, "expectedVersion": "no_stream", "events": [event(dataBase64=base64.b64encode(b"\0\1").decode()),
                                                                 event()]}]})
    assert status == 200, reply
    first, second = reply["results"]
    assert (first["stream"], first["fromVersion"], first["version"]) == (a, 2, 2)
    assert (second["stream"], second["fromVersion"], second["version"]) == (b, 1, 2)
    assert second["position"] == first["position"] + 2 == reply["position"]
    status, page = await call(http, "GET", "/v1/all", params={"from": str(first["position"]), "limit": "3"})
    assert [(e["stream"], e["position"]) for e in page["events"]] == [
        (a, first["position"]), (b, first["position"] + 1), (b, first["position"] + 2)]
    assert page["events"][1]["dataBase64"] == "AAE="
    status, raw = await call(http, "GET", f"/v1/streams/{a}", params={"from": "2"})
    assert raw["events"][0]["data"] == {"n": 12345678901234567890}


async def test_a_failed_check_rejects_all_and_lists_every_failing_stream(http):
    a, b, c = name("a"), name("b"), name("c")
    await call(http, "POST", f"/v1/streams/{a}", json={"events": [event()]})
    await call(http, "POST", f"/v1/streams/{c}", json={"events": [event(), event()]})
    before = await head(http)
    status, reply = await call(http, "POST", "/v1/streams", json={"appends": [
        {"stream": a, "expectedVersion": 0, "events": [event()]},
        {"stream": b, "expectedVersion": "any", "events": [event()]},
        {"stream": c, "expectedVersion": 5, "events": [event()]}]})
    assert status == 409 and reply["error"] == "wrong_expected_version"
    assert reply["failures"] == [{"stream": a, "expectedVersion": 0, "currentVersion": 1},
                                 {"stream": c, "expectedVersion": 5, "currentVersion": 2}]
    assert (reply["stream"], reply["expectedVersion"], reply["currentVersion"]) == (a, 0, 1)
    assert await head(http) == before
    assert (await call(http, "GET", f"/v1/streams/{b}"))[0] == 404


async def test_the_same_request_again_returns_the_original_reply(http):
    a, b = name("a"), name("b")
    body = {"appends": [{"stream": a, "expectedVersion": "no_stream", "events": [event(), event()]},
                        {"stream": b, "expectedVersion": "no_stream", "events": [event()]}]}
    first = await call(http, "POST", "/v1/streams", json=body)
    before = await head(http)
    again = await call(http, "POST", "/v1/streams", json=body)
    assert first == again and first[0] == 200
    assert await head(http) == before
    partial = {"appends": [body["appends"][0], {"stream": b, "events": [event()]}]}
    status, reply = await call(http, "POST", "/v1/streams", json=partial)
    assert status == 409 and reply["error"] == "duplicate_event_id"
    changed = {"appends": [body["appends"][0], {**body["appends"][1],
                                                "events": [{**body["appends"][1]["events"][0], "data": 1}]}]}
    status, reply = await call(http, "POST", "/v1/streams", json=changed)
    assert status == 409 and reply["error"] == "duplicate_event_id"
    assert await head(http) == before


@pytest.mark.parametrize("body, status, code, field", [
    ({}, 400, "invalid_request", "appends"),
    ({"appends": []}, 400, "invalid_request", "appends"),
    ({"appends": [{"stream": "x", "events": []}]}, 400, "invalid_request", "appends[0].events"),
    ({"appends": [{"events": [{"type": "A"}]}]}, 400, "invalid_request", "appends[0].stream"),
    ({"appends": [{"stream": "ok", "events": [{"type": "A"}]}, {"stream": "$x", "events": [{"type": "A"}]}]},
     400, "reserved_stream", "appends[1].stream"),
    ({"appends": [{"stream": "x", "expectedVersion": -1, "events": [{"type": "A"}]}]},
     400, "invalid_request", "appends[0].expectedVersion"),
    ({"appends": [{"stream": "x", "events": [{"type": ""}]}]}, 400, "invalid_request", "appends[0].events[0].type"),
    ({"appends": [{"stream": "x", "events": [{"type": "A", "bogus": 1}]}]},
     400, "invalid_request", "appends[0].events[0].bogus"),
    ({"appends": [{"stream": "x", "events": [{"type": "A", "id": "6f1c2a9e-0000-4000-8000-000000000001"}]},
                  {"stream": "y", "events": [{"type": "A", "id": "6f1c2a9e-0000-4000-8000-000000000001"}]}]},
     400, "invalid_request", "appends[1].events[0].id"),
    ({"appends": [{"stream": "x", "events": [{"type": "A"}]}], "extra": 1}, 400, "invalid_request", "extra"),
    ({"appends": [{"stream": f"s{i}", "events": [{"type": "A"}]} for i in range(1001)]},
     400, "invalid_request", "appends"),
    ({"appends": [{"stream": "x", "events": [{"type": "A"}] * 6000}, {"stream": "y", "events": [{"type": "A"}] * 4001}]},
     400, "invalid_request", "appends"),
])
async def test_bad_requests_are_4xx_and_write_nothing(http, body, status, code, field):
    before = await head(http)
    got, reply = await call(http, "POST", "/v1/streams", json=body)
    assert (got, reply["error"], reply.get("field")) == (status, code, field), reply
    assert await head(http) == before


async def test_a_stream_named_twice_gets_its_entries_in_order(http):
    a = name("twice")
    status, reply = await call(http, "POST", "/v1/streams", json={"appends": [
        {"stream": a, "expectedVersion": "no_stream", "events": [event()]},
        {"stream": a, "expectedVersion": 1, "events": [event(), event()]}]})
    assert status == 200, reply
    assert [(r["fromVersion"], r["version"]) for r in reply["results"]] == [(1, 1), (2, 3)]


async def test_a_body_that_is_not_json_is_a_400(http):
    status, reply = await call(http, "POST", "/v1/streams", data=b"{nope", headers={"Content-Type": "application/json"})
    assert status == 400 and reply["field"] == "body"


async def test_ten_thousand_events_across_streams_in_one_request(http):
    streams = [name(f"bulk{i}") for i in range(100)]
    body = {"appends": [{"stream": s, "events": [{"type": "Bulk", "data": {"i": i, "pad": "x" * 100}}
                                                 for i in range(100)]} for s in streams]}
    status, reply = await call(http, "POST", "/v1/streams", json=body)
    assert status == 200
    assert reply["results"][-1]["position"] - reply["results"][0]["position"] == 100 * 100 - 100


async def test_the_async_and_sync_clients_append_to_several_streams(url):
    from evstore.client import AsyncEvstoreClient, EvstoreClient, NewEvent, StreamAppend, WrongExpectedVersion

    a, b = name("ca"), name("cb")
    async with AsyncEvstoreClient(url, timeout=10) as client:
        appends = [StreamAppend(a, [NewEvent("A", {"x": 1})], "no_stream"),
                   {"stream": b, "events": [{"type": "B"}], "expectedVersion": "no_stream"}]
        reply = await client.append_many(appends)
        assert [r["stream"] for r in reply["results"]] == [a, b] and reply["position"] == reply["results"][1]["position"]
        with pytest.raises(WrongExpectedVersion) as caught:
            await client.append_many([StreamAppend(a, [NewEvent("A")], 0), StreamAppend(b, [NewEvent("B")], 7)])
        assert [(f["stream"], f["currentVersion"]) for f in caught.value.failures] == [(a, 1), (b, 1)]
    with EvstoreClient(url, timeout=10) as client:
        reply = client.append_many([StreamAppend(a, [NewEvent("A")], 1), StreamAppend(b, [NewEvent("B")], 1)])
        assert [r["version"] for r in reply["results"]] == [2, 2]
        with pytest.raises(TypeError):
            client.append_many(StreamAppend(a, [NewEvent("A")]))


def test_the_cli_appends_to_several_streams(url, tmp_path):
    import json

    from click.testing import CliRunner

    from evstore.client.cli import cli

    a, b = name("clia"), name("clib")
    path = tmp_path / "appends.json"
    path.write_text(json.dumps({"appends": [{"stream": a, "expectedVersion": "no_stream", "events": [{"type": "A"}]},
                                            {"stream": b, "events": [{"type": "B"}, {"type": "B"}]}]}))
    runner = CliRunner()
    result = runner.invoke(cli, ["--url", url, "append-many", "--file", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith(f"appended to {a}: version 1")
    assert f"appended to {b}: versions 1..2" in result.output
    again = runner.invoke(cli, ["--url", url, "append-many", "--file", "-", "--json"],
                          input=json.dumps([{"stream": a, "expectedVersion": 0, "events": [{"type": "A"}]}]))
    assert again.exit_code == 1 and "wrong_expected_version" in again.output


async def test_the_body_limit_applies_and_a_too_large_request_writes_nothing(node_factory):
    small = node_factory("small", args=("--max-body-bytes", "2048"))
    async with aiohttp.ClientSession(base_url=small.url) as http:
        big = {"appends": [{"stream": f"s{i}", "events": [{"type": "A", "data": "x" * 100}]} for i in range(20)]}
        status, reply = await call(http, "POST", "/v1/streams", json=big)
        assert (status, reply["error"], reply["maxBytes"]) == (413, "too_large", 2048)
        status, info = await call(http, "GET", "/v1/info")
        assert {"multi-stream-append", "snapshots"} <= set(info["features"])
        assert (await head(http)) == 0
