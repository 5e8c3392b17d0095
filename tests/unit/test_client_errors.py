"""Client without a server: error mapping, request building, retry delays, SSE parsing, sync parity."""
from __future__ import annotations

import inspect
import uuid

import pytest

from evstore.client import errors, protocol
from evstore.client.async_client import AsyncEvstoreClient
from evstore.client.sse import SSEMessage, SSEParser
from evstore.client.sync_client import EvstoreClient


# -- error mapping ------------------------------------------------------------------------------

@pytest.mark.parametrize("status,code,cls", [
    (400, "invalid_request", errors.InvalidRequest),
    (400, "reserved_stream", errors.ReservedStream),
    (401, "unauthorized", errors.Unauthorized),
    (403, "forbidden", errors.Forbidden),
    (404, "stream_not_found", errors.StreamNotFound),
    (404, "subscription_not_found", errors.SubscriptionNotFound),
    (404, "snapshot_not_found", errors.SnapshotNotFound),
    (409, "wrong_expected_version", errors.WrongExpectedVersion),
    (409, "duplicate_event_id", errors.DuplicateEventId),
    (409, "subscription_exists", errors.SubscriptionExists),
    (409, "too_many_consumers", errors.TooManyConsumers),
    (410, "stream_deleted", errors.StreamDeleted),
    (413, "too_large", errors.TooLarge),
    (503, "unavailable", errors.Unavailable),
])
def test_every_contract_code_maps_to_its_type(status, code, cls):
    err = errors.error_from_reply(status, {"error": code, "message": "why"})
    assert type(err) is cls
    assert isinstance(err, errors.EvstoreError)
    assert (err.status, err.code, err.message) == (status, code, "why")
    assert str(err) == f"{code}: why"


def test_wrong_expected_version_carries_both_versions():
    err = errors.error_from_reply(409, {"error": "wrong_expected_version", "message": "m",
                                        "expectedVersion": 0, "currentVersion": 3})
    assert isinstance(err, errors.Conflict)
    assert err.expected_version == 0
    assert err.current_version == 3
    assert err.details == {"expectedVersion": 0, "currentVersion": 3}


def test_invalid_request_names_the_field():
    err = errors.error_from_reply(400, {"error": "invalid_request", "message": "m", "field": "events[0].type"})
    assert err.field == "events[0].type"
    assert errors.error_from_reply(400, {"error": "invalid_request", "message": "m"}).field is None


def test_unavailable_retry_after_is_a_number_or_none():
    assert errors.error_from_reply(503, {"error": "unavailable", "message": "m", "retryAfter": 2}).retry_after == 2.0
    assert errors.error_from_reply(503, {"error": "unavailable", "message": "m", "retryAfter": "x"}).retry_after is None
    assert errors.error_from_reply(503, {"error": "unavailable", "message": "m"}).retry_after is None


def test_not_found_errors_share_a_base():
    for code in ("stream_not_found", "subscription_not_found", "snapshot_not_found"):
        assert isinstance(errors.error_from_reply(404, {"error": code, "message": ""}), errors.NotFound)


@pytest.mark.parametrize("status,body,text", [
    (500, {"error": "internal", "message": "boom"}, ""),      # unknown code
    (502, None, "<html>Bad Gateway</html>"),                    # proxy page
    (405, None, "405: Method Not Allowed"),                     # no JSON at all
    (404, {"message": "no error key"}, ""),
])
def test_anything_else_is_a_server_error(status, body, text):
    err = errors.error_from_reply(status, body, text)
    assert type(err) is errors.ServerError
    assert err.status == status


def test_server_error_without_json_keeps_a_snippet_of_the_body():
    err = errors.error_from_reply(502, None, "<html>\n  Bad   Gateway\n</html>")
    assert err.code == "http_502"
    assert "Bad Gateway" in err.message


def test_message_falls_back_to_the_code():
    err = errors.error_from_reply(410, {"error": "stream_deleted"})
    assert err.message == "stream_deleted"


def test_connection_failed_has_no_status():
    err = errors.ConnectionFailed("http://127.0.0.1:1", "refused")
    assert err.status is None and err.url == "http://127.0.0.1:1" and err.code == "connection_failed"


# -- request building ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,segment", [
    ("order-1", "order-1"),
    ("a/b", "a%2Fb"),
    ("a b?c#d", "a%20b%3Fc%23d"),
    ("$all", "%24all"),
    ("café", "caf%C3%A9"),
    (".", "%2E"),
    ("..", "%2E%2E"),
    ("%2F", "%252F"),
])
def test_stream_names_are_encoded_as_one_path_segment(name, segment):
    assert protocol.path_segment(name) == segment
    assert protocol.stream_path(name, "/info") == f"/v1/streams/{segment}/info"


def test_client_url_keeps_the_encoded_segment():
    client = AsyncEvstoreClient("http://127.0.0.1:7113/")
    url = client._url(protocol.stream_path("a/b"), protocol.read_stream_query(5, 10, backward=True))
    assert url.raw_path == "/v1/streams/a%2Fb"
    assert url.query_string == "from=5&limit=10&direction=backward"


def test_append_body_assigns_each_event_an_id_once():
    given = str(uuid.uuid4())
    events = [{"type": "A", "data": {"x": 1}}, protocol.NewEvent("B", [1, 2], {"m": True}),
              {"type": "C", "data": None, "id": given}]
    body = protocol.append_body(events, "no_stream")
    assert body["expectedVersion"] == "no_stream"
    ids = [e["id"] for e in body["events"]]
    assert ids[2] == given
    assert len(set(ids)) == 3 and all(uuid.UUID(i) for i in ids)
    assert body["events"][1] == {"type": "B", "data": [1, 2], "metadata": {"m": True}, "id": ids[1]}
    assert "id" not in events[0], "the caller's dict is not modified"


def test_append_body_rejects_a_bare_event():
    with pytest.raises(TypeError):
        protocol.append_body({"type": "A", "data": 1})


@pytest.mark.parametrize("value", ["any", "no_stream", "stream_exists", 0, 7])
def test_expected_version_forms(value):
    assert protocol.check_expected_version(value) == value


@pytest.mark.parametrize("value", ["anything", -1, True, "1", None])
def test_bad_expected_versions_are_refused_before_sending(value):
    with pytest.raises(ValueError):
        protocol.check_expected_version(value)


def test_parse_expected_version_from_the_command_line():
    assert protocol.parse_expected_version("12") == 12
    assert protocol.parse_expected_version("no_stream") == "no_stream"
    with pytest.raises(ValueError):
        protocol.parse_expected_version("-3")


def test_query_drops_none_repeats_lists_and_spells_booleans():
    assert protocol.query(a=None, b=True, c=False, d=[1, "x"], e=0) == [
        ("b", "true"), ("c", "false"), ("d", "1"), ("d", "x"), ("e", "0")]


def test_read_all_query_uses_the_contract_names():
    q = protocol.read_all_query(from_position=10, limit=5, backward=True, types=["A", "B"], type_prefix="Or",
                                stream_prefix="order-", stream_pattern="order-*")
    assert q == [("from", "10"), ("limit", "5"), ("direction", "backward"), ("type", "A"), ("type", "B"),
                 ("typePrefix", "Or"), ("streamPrefix", "order-"), ("streamPattern", "order-*")]
    assert protocol.read_stream_query() == []


def test_replies_keep_integers_beyond_64_bits():
    assert protocol.loads(b'{"big": 123456789012345678901234567890, "n": 1.5}') == {
        "big": 123456789012345678901234567890, "n": 1.5}
    assert protocol.loads('{"id": "00000000-0000-0000-0000-000000000001"}')["id"].endswith("1")
    assert protocol.decode_reply(b"") is None and protocol.decode_reply(b"<html>") is None


def test_subscription_settings_body():
    body = protocol.SubscriptionSettings(stream="order-1", start_from=0, buffer_size=5, ack_timeout=1.5,
                                         max_retries=2, concurrency_limit=3, partition_by="stream").body()
    assert body == {"stream": "order-1", "startFrom": 0, "bufferSize": 5, "ackTimeout": 1.5, "maxRetries": 2,
                    "concurrencyLimit": 3, "partitionBy": "stream"}
    assert protocol.SubscriptionSettings(filter={"typePrefix": "Or"}).body() == {"filter": {"typePrefix": "Or"}}
    for bad in (protocol.SubscriptionSettings(), protocol.SubscriptionSettings(stream="s", filter={}),
                protocol.SubscriptionSettings(stream="s", start_from="middle"),
                protocol.SubscriptionSettings(stream="s", partition_by="type")):
        with pytest.raises(ValueError):
            bad.body()


def test_subscription_filter_and_delivery_settings_use_the_wire_names():
    assert protocol.all_filter(types=["A"], stream_prefix="order-") == {"type": ["A"], "streamPrefix": "order-"}
    assert protocol.all_filter(types="A") == {"type": ["A"]}
    assert protocol.all_filter(types=["A", "B"], type_prefix="X", stream_pattern="o-*") == {
        "type": ["A", "B"], "typePrefix": "X", "streamPattern": "o-*"}
    assert protocol.all_filter() == {}
    assert protocol.delivery_settings(buffer_size=3, partition_by="none") == {"bufferSize": 3, "partitionBy": "none"}


# -- retries ------------------------------------------------------------------------------------

def test_retry_delay_follows_retry_after_capped():
    client = AsyncEvstoreClient(max_retry_delay=2.0)
    unavailable = lambda after: errors.error_from_reply(  # noqa: E731
        503, {"error": "unavailable", "message": "m", **({"retryAfter": after} if after is not None else {})})
    assert client._retry_delay(unavailable(0.5), 0) == 0.5
    assert client._retry_delay(unavailable(30), 0) == 2.0
    assert client._retry_delay(unavailable(None), 0) == pytest.approx(0.1)
    assert client._retry_delay(unavailable(None), 3) == pytest.approx(0.8)
    assert client._retry_delay(unavailable(-1), 0) == 0.0


# -- SSE ----------------------------------------------------------------------------------------

def test_sse_parser_joins_data_lines_and_skips_comments():
    parser = SSEParser()
    lines = [": heartbeat", "", "event: update", "id: 7", "data: {\"a\":", "data: 1}", "", "data:x", ""]
    messages = [m for m in map(parser.feed, lines) if m is not None]
    assert messages == [SSEMessage("update", '{"a":\n1}', "7"), SSEMessage("message", "x", "7")]


# -- sync wrapper -------------------------------------------------------------------------------

def test_sync_client_mirrors_every_public_async_method():
    async_names = {n for n, m in vars(AsyncEvstoreClient).items()
                   if not n.startswith("_") and (inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m))}
    missing = {n for n in async_names if not callable(getattr(EvstoreClient, n, None))}
    assert not missing
    assert inspect.signature(EvstoreClient.append) == inspect.signature(AsyncEvstoreClient.append)


def test_sync_client_closes_and_refuses_use_after_close():
    client = EvstoreClient("http://127.0.0.1:1")
    thread = client._thread
    client.close()
    client.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError):
        client.info()
