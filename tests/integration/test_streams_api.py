"""The streams, $all and operations endpoints over real HTTP against a real node."""
from __future__ import annotations

import uuid
from urllib.parse import quote

import aiohttp
import pytest

from httphelpers import call


@pytest.fixture
async def http(node):
    async with aiohttp.ClientSession(base_url=node.url) as session:
        yield session


async def test_append_read_and_conflict_codes(http):
    status, reply = await call(http, "POST", "/v1/streams/order-1",
                               json={"expectedVersion": "no_stream", "events": [{"type": "OrderPlaced",
                                                                                 "data": {"total": 3}}]})
    assert (status, reply) == (200, {"stream": "order-1", "fromVersion": 1, "version": 1, "position": 1})
    status, reply = await call(http, "POST", "/v1/streams/order-1",
                               json={"expectedVersion": 0, "events": [{"type": "OrderPlaced"}]})
    assert status == 409 and reply["error"] == "wrong_expected_version"
    assert (reply["expectedVersion"], reply["currentVersion"]) == (0, 1)
    status, page = await call(http, "GET", "/v1/streams/order-1")
    assert status == 200 and page["version"] == 1 and page["next"] is None
    event = page["events"][0]
    assert set(event) == {"id", "stream", "version", "position", "type", "data", "metadata", "created"}
    assert event["data"] == {"total": 3} and event["metadata"] == {} and event["created"].endswith("Z")
    uuid.UUID(event["id"])
    status, reply = await call(http, "GET", "/v1/streams/missing")
    assert status == 404 and reply["error"] == "stream_not_found"


async def test_a_409_to_a_forwarded_append_carries_the_committed_position(http):
    """A follower holds a forwarded append's 409 until it shows the committed position the leader sends with
    it, so that a read there right after shows the version the 409 names (a probe saw 40 of 827 such 409s
    name a version the follower did not show yet)."""
    await call(http, "POST", "/v1/streams/fwd-409", json={"events": [{"type": "A"}, {"type": "B"}]})
    async with http.post("/v1/streams/fwd-409", json={"expectedVersion": 0, "events": [{"type": "C"}]},
                         headers={"X-Evstore-Forwarded": "n2"}) as reply:
        assert reply.status == 409
        committed = int(reply.headers["X-Evstore-Committed-Position"])
    head = (await call(http, "GET", "/v1/all", params={"direction": "backward", "limit": "1"}))[1]["head"]
    assert committed == head
    async with http.post("/v1/streams/fwd-409", json={"expectedVersion": 0, "events": [{"type": "C"}]}) as reply:
        assert reply.status == 409 and "X-Evstore-Committed-Position" not in reply.headers  # clients get none


async def test_retry_with_same_ids_returns_original_reply(http):
    body = {"expectedVersion": "no_stream", "events": [{"id": str(uuid.uuid4()), "type": "A", "data": 1},
                                                       {"id": str(uuid.uuid4()), "type": "B", "data": 2}]}
    first = await call(http, "POST", "/v1/streams/idem", json=body)
    again = await call(http, "POST", "/v1/streams/idem", json=body)
    assert first == again and first[0] == 200
    first_id, second_id = (e["id"] for e in body["events"])
    body["events"][1]["data"] = 99
    status, reply = await call(http, "POST", "/v1/streams/idem", json=body)
    assert status == 409 and reply["error"] == "duplicate_event_id"
    assert reply["eventId"] == second_id and "other content" in reply["message"]  # the one that differs
    body["events"][1]["data"] = 2
    # the 409 names what is wrong: an id of the request never written, or the original events in another order
    new_id = str(uuid.uuid4())
    status, reply = await call(http, "POST", "/v1/streams/idem",
                               json={"events": [body["events"][0], {"id": new_id, "type": "C"}]})
    assert status == 409 and reply["eventId"] == first_id and new_id in reply["message"]
    assert "other content" not in reply["message"]
    status, reply = await call(http, "POST", "/v1/streams/idem", json={"events": body["events"][::-1]})
    assert status == 409 and "order" in reply["message"] and "other content" not in reply["message"]
    assert (await call(http, "GET", "/v1/all"))[1]["head"] == 2


async def test_soft_and_hard_delete(http):
    await call(http, "POST", "/v1/streams/s1", json={"events": [{"type": "A"}, {"type": "B"}]})
    status, _ = await call(http, "DELETE", "/v1/streams/s1", params={"expectedVersion": "2"})
    assert status == 204
    assert (await call(http, "GET", "/v1/streams/s1"))[0] == 404
    status, info = await call(http, "GET", "/v1/streams/s1/info")
    assert status == 200 and info["deleted"] == "soft" and info["metadata"]["truncateBefore"] == 3
    status, reply = await call(http, "POST", "/v1/streams/s1", json={"events": [{"type": "C"}]})
    assert reply["fromVersion"] == 3
    status, page = await call(http, "GET", "/v1/streams/s1")
    assert [e["version"] for e in page["events"]] == [3]

    status, _ = await call(http, "DELETE", "/v1/streams/s1", params={"hard": "true"})
    assert status == 204
    for method, path, kwargs in [("GET", "/v1/streams/s1", {}),
                                 ("POST", "/v1/streams/s1", {"json": {"events": [{"type": "D"}]}}),
                                 ("GET", "/v1/streams/s1/metadata", {})]:
        status, reply = await call(http, method, path, **kwargs)
        assert (status, reply["error"]) == (410, "stream_deleted")
    assert (await call(http, "GET", "/v1/streams/s1/info"))[1]["deleted"] == "hard"


async def test_metadata_round_trip_and_retention(http):
    await call(http, "POST", "/v1/streams/m", json={"events": [{"type": "T", "data": i} for i in range(5)]})
    status, meta = await call(http, "PUT", "/v1/streams/m/metadata",
                              json={"maxCount": 2, "custom": {"team": "billing"}})
    assert status == 200 and meta == {"maxCount": 2, "custom": {"team": "billing"}}
    assert (await call(http, "GET", "/v1/streams/m/metadata"))[1] == meta
    page = (await call(http, "GET", "/v1/streams/m"))[1]
    assert [e["data"] for e in page["events"]] == [3, 4]
    status, reply = await call(http, "PUT", "/v1/streams/$$m/metadata", json={})
    assert (status, reply["error"]) == (400, "reserved_stream")


async def test_all_with_filters_and_stream_list(http):
    for stream, event_type in [("order-1", "OrderPlaced"), ("user-1", "UserJoined"), ("order-2", "OrderShipped")]:
        await call(http, "POST", f"/v1/streams/{stream}", json={"events": [{"type": event_type}]})
    status, page = await call(http, "GET", "/v1/all?type=OrderPlaced&type=UserJoined")
    assert status == 200 and [e["stream"] for e in page["events"]] == ["order-1", "user-1"]
    page = (await call(http, "GET", "/v1/all", params={"streamPattern": "order-*", "typePrefix": "OrderS"}))[1]
    assert [e["stream"] for e in page["events"]] == ["order-2"] and page["head"] == 3
    page = (await call(http, "GET", "/v1/all", params={"direction": "backward", "limit": "1"}))[1]
    assert [e["position"] for e in page["events"]] == [3] and page["next"] == 2
    listing = (await call(http, "GET", "/v1/streams", params={"prefix": "order-", "limit": "1"}))[1]
    assert [s["stream"] for s in listing["streams"]] == ["order-1"] and listing["next"] == "order-1"
    listing = (await call(http, "GET", "/v1/streams", params={"prefix": "order-", "after": "order-1"}))[1]
    assert [s["stream"] for s in listing["streams"]] == ["order-2"] and listing["next"] is None


async def test_stream_names_are_one_url_segment(http):
    status, reply = await call(http, "POST", "/v1/streams/tenant%2Forder%20%C3%A9", json={"events": [{"type": "T"}]})
    assert status == 200 and reply["stream"] == "tenant/order é"
    assert (await call(http, "GET", "/v1/streams/tenant%2Forder%20%C3%A9/info"))[1]["stream"] == "tenant/order é"


async def test_operations_endpoints(http, node):
    assert (await call(http, "GET", "/health/live"))[0] == 200
    assert (await call(http, "GET", "/health/ready"))[1]["role"] == "single"
    await call(http, "POST", "/v1/streams/x", json={"events": [{"type": "T"}]})
    status, cluster = await call(http, "GET", "/v1/cluster")
    assert status == 200 and cluster["role"] == "single" and cluster["committedPosition"] == 1
    assert cluster["leader"]["url"] == node.url and cluster["isr"] == [cluster["node"]]
    info = (await call(http, "GET", "/v1/info"))[1]
    assert info["mode"] == "single" and info["store"] == "default"
    status, text = await call(http, "GET", "/metrics")
    for name in ("evstore_appends_total", "evstore_events_appended_total", "evstore_append_latency_seconds_bucket",
                 "evstore_sync_latency_seconds_count", "evstore_group_commit_requests_count",
                 "evstore_storage_bytes", 'evstore_http_requests_total{forwarded="false",method="POST",route="/v1/streams/{stream}"'):
        assert name in text, name
    status, reply = await call(http, "GET", "/v1/nothing-here")
    assert (status, reply["error"]) == (404, "not_found")
    status, reply = await call(http, "PATCH", "/v1/streams/x")
    assert (status, reply["error"]) == (405, "method_not_allowed")


async def test_bearer_token_roles(node_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("reader-0123456789abcdef read\nwriter-0123456789abcdef write\nadmin-0123456789abcdef admin\n")
    node = node_factory("auth", args=("--api-tokens-file", str(tokens)))
    async with aiohttp.ClientSession(base_url=node.url) as http:
        assert (await call(http, "GET", "/health/ready"))[0] == 200
        assert (await call(http, "GET", "/metrics"))[0] == 200
        assert (await call(http, "GET", "/v1/all"))[1]["error"] == "unauthorized"
        reader = {"Authorization": "Bearer reader-0123456789abcdef"}
        writer = {"Authorization": "Bearer writer-0123456789abcdef"}
        assert (await call(http, "GET", "/v1/all", headers=reader))[0] == 200
        status, reply = await call(http, "POST", "/v1/streams/a", json={"events": [{"type": "T"}]}, headers=reader)
        assert (status, reply["error"]) == (403, "forbidden")
        assert (await call(http, "POST", "/v1/streams/a", json={"events": [{"type": "T"}]}, headers=writer))[0] == 200
        assert (await call(http, "POST", "/v1/admin/verify", headers=writer))[0] == 403
        admin = {"Authorization": "Bearer admin-0123456789abcdef"}
        assert (await call(http, "POST", "/v1/admin/verify", headers=admin))[1] == {"checked": 1, "corrupt": []}


async def raw_call(http, method, path, body: bytes):
    async with http.request(method, path, data=body, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.read()


async def test_data_and_metadata_are_returned_exactly_as_sent(http):
    """Big integers, long decimals, exponents and the client's own spacing survive: no re-encoding."""
    data = b'{"n":18446744073709551617, "d":0.1000000000000000000001,"e":1E2,"s":"\\u00e9"}'
    metadata = b'{"big": -340282366920938463463374607431768211457}'
    body = b'{"events":[{"type":"Exact","data":' + data + b',"metadata":' + metadata + b'}]}'
    status, reply = await raw_call(http, "POST", "/v1/streams/exact", body)
    assert status == 200, reply
    status, page = await raw_call(http, "GET", "/v1/streams/exact", b"")
    assert status == 200
    assert b'"data":' + data + b"," in page and b'"metadata":' + metadata + b"," in page
    status, page = await raw_call(http, "GET", "/v1/all?type=Exact", b"")
    assert b'"data":' + data + b"," in page


async def test_binary_payloads_round_trip_as_base64(http):
    import base64
    payload, meta = bytes(range(256)), b"\x00\xff protobuf"
    event = {"id": str(uuid.uuid4()), "type": "Bin", "dataBase64": base64.b64encode(payload).decode(),
             "metadataBase64": base64.b64encode(meta).decode()}
    status, reply = await call(http, "POST", "/v1/streams/bin", json={"events": [event, {"type": "Json", "data": 1}]})
    assert status == 200, reply
    again = await call(http, "POST", "/v1/streams/bin", json={"events": [event]})
    assert again[0] == 200 and again[1]["version"] == 1  # an idempotent retry of a binary event
    status, page = await call(http, "GET", "/v1/streams/bin")
    first, second = page["events"]
    assert "data" not in first and "metadata" not in first
    assert base64.b64decode(first["dataBase64"]) == payload and base64.b64decode(first["metadataBase64"]) == meta
    assert second["data"] == 1 and second["metadata"] == {} and "dataBase64" not in second
    only_meta = {"type": "M", "data": {"a": 1}, "metadataBase64": base64.b64encode(b"\x01").decode()}
    assert (await call(http, "POST", "/v1/streams/bin", json={"events": [only_meta]}))[0] == 200
    last = (await call(http, "GET", "/v1/streams/bin", params={"from": "3"}))[1]["events"][0]
    assert last["data"] == {"a": 1} and base64.b64decode(last["metadataBase64"]) == b"\x01"


async def test_a_rare_type_is_found_in_one_filtered_request(http):
    """The type index answers a filtered $all read in one request, however many other events come first."""
    common = {"events": [{"type": "Common", "data": i} for i in range(10_000)]}
    for _ in range(4):
        assert (await call(http, "POST", "/v1/streams/busy", json=common))[0] == 200
    await call(http, "POST", "/v1/streams/rare-1", json={"events": [{"type": "Rare", "data": "needle"}]})
    await call(http, "POST", "/v1/streams/busy", json={"events": [{"type": "Common"}]})
    status, page = await call(http, "GET", "/v1/all", params={"type": "Rare"})
    assert status == 200 and [e["data"] for e in page["events"]] == ["needle"] and page["next"] is None
    page = (await call(http, "GET", "/v1/all", params={"typePrefix": "Ra"}))[1]
    assert [e["stream"] for e in page["events"]] == ["rare-1"] and page["next"] is None
    page = (await call(http, "GET", "/v1/all", params={"streamPrefix": "rare-"}))[1]
    assert [e["type"] for e in page["events"]] == ["Rare"] and page["next"] is None
    page = (await call(http, "GET", "/v1/all", params={"type": "Rare", "direction": "backward"}))[1]
    assert [e["type"] for e in page["events"]] == ["Rare"] and page["next"] is None


async def test_truncate_before_past_the_end_and_retries_after_a_scavenge(http):
    events = [{"id": str(uuid.uuid4()), "type": "T", "data": i} for i in range(3)]
    status, first = await call(http, "POST", "/v1/streams/tb", json={"expectedVersion": "no_stream", "events": events})
    assert status == 200
    assert (await call(http, "PUT", "/v1/streams/tb/metadata", json={"truncateBefore": 10}))[0] == 200
    status, page = await call(http, "GET", "/v1/streams/tb")
    assert (status, page["events"], page["version"]) == (200, [], 3)
    assert (await call(http, "GET", "/v1/streams/tb/info"))[1]["deleted"] == "no"
    status, scavenged = await call(http, "POST", "/v1/admin/scavenge")
    assert status == 200 and scavenged["removed"] >= 3
    assert await call(http, "POST", "/v1/streams/tb", json={"expectedVersion": "no_stream", "events": events}) == \
        (200, first)  # the retry is answered from the kept ids, not written again
    assert (await call(http, "GET", "/v1/streams/tb"))[1]["version"] == 3


async def test_new_metadata_keeps_what_a_soft_delete_hid(http):
    """A PUT of metadata replaces it, but not the soft delete: a deleted stream stays deleted, and after it is
    appended to again its earlier events stay hidden."""
    events = {"events": [{"type": "A"}, {"type": "B"}, {"type": "C"}]}
    for stream in ("gone-1", "gone-2"):
        assert (await call(http, "POST", f"/v1/streams/{stream}", json=events))[0] == 200
        assert (await call(http, "DELETE", f"/v1/streams/{stream}"))[0] == 204
    status, reply = await call(http, "PUT", "/v1/streams/gone-1/metadata", json={"custom": {"owner": "x"}})
    assert (status, reply) == (200, {"custom": {"owner": "x"}, "truncateBefore": 4})
    assert (await call(http, "GET", "/v1/streams/gone-1"))[0] == 404
    assert (await call(http, "GET", "/v1/streams/gone-1/info"))[1]["deleted"] == "soft"
    assert (await call(http, "POST", "/v1/streams/gone-2", json={"events": [{"type": "D"}]}))[1]["fromVersion"] == 4
    status, reply = await call(http, "PUT", "/v1/streams/gone-2/metadata", json={"maxCount": 100, "truncateBefore": 2})
    assert (status, reply) == (200, {"maxCount": 100, "truncateBefore": 4})
    status, page = await call(http, "GET", "/v1/streams/gone-2")
    assert status == 200 and [e["version"] for e in page["events"]] == [4]
    # appended to again, it is no longer deleted: a truncateBefore past its end hides events, not the stream
    assert (await call(http, "PUT", "/v1/streams/gone-2/metadata", json={"truncateBefore": 100}))[0] == 200
    status, page = await call(http, "GET", "/v1/streams/gone-2")
    assert (status, page["events"], page["version"]) == (200, [], 4)
    info = (await call(http, "GET", "/v1/streams/gone-2/info"))[1]
    assert (info["deleted"], info["metadata"]) == ("no", {"truncateBefore": 100})
    assert (await call(http, "POST", "/v1/streams/gone-2", json={"expectedVersion": "stream_exists",
                                                                  "events": [{"type": "E"}]}))[0] == 200
    assert (await call(http, "DELETE", "/v1/streams/gone-2"))[0] == 204
    assert (await call(http, "GET", "/v1/streams/gone-2/info"))[1]["deleted"] == "soft"


async def test_the_metadata_stream_of_a_longest_name_can_be_read_and_listed_past(http):
    """`$$` and a name of 512 bytes is 514 bytes: reading it was a 400, and a listing handed it out as `next`,
    then refused it back as `after`, so paging stopped there."""
    name = "L" * 512
    assert (await call(http, "POST", f"/v1/streams/{name}", json={"events": [{"type": "A"}]}))[0] == 200
    assert (await call(http, "PUT", f"/v1/streams/{name}/metadata", json={"maxCount": 5}))[0] == 200
    status, page = await call(http, "GET", f"/v1/streams/%24%24{name}")
    assert status == 200 and [e["type"] for e in page["events"]] == ["$metadata"]
    status, listed = await call(http, "GET", "/v1/streams?prefix=%24%24L&limit=1")
    assert status == 200 and listed["streams"][0]["stream"] == "$$" + name
    status, after = await call(http, "GET", f"/v1/streams?prefix=%24%24L&limit=1&after={quote('$$' + name)}")
    assert (status, after["streams"]) == (200, []), after  # the name a listing gives as `next` is taken back
    assert (await call(http, "POST", f"/v1/streams/{'L' * 513}", json={"events": [{"type": "A"}]}))[0] == 400


async def test_writes_refuse_query_parameters_they_would_ignore(http):
    """expectedVersion goes in an append's body; in the query it was ignored and the event written."""
    assert (await call(http, "POST", "/v1/streams/query-1", json={"events": [{"type": "A"}]}))[0] == 200
    for method, path, body in (("POST", "/v1/streams/query-1?expectedVersion=no_stream",
                                {"events": [{"type": "B"}]}),
                               ("POST", "/v1/streams?bogus=1", {"appends": [{"stream": "query-1",
                                                                             "events": [{"type": "B"}]}]}),
                               ("PUT", "/v1/streams/query-1/metadata?bogus=1", {"maxCount": 10})):
        status, reply = await call(http, method, path, json=body)
        assert (status, reply["error"]) == (400, "invalid_request"), reply
    status, page = await call(http, "GET", "/v1/streams/query-1")
    assert page["version"] == 1
    assert (await call(http, "GET", "/v1/streams/query-1/metadata"))[1] == {}
