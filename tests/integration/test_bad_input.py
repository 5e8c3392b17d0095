"""Bad input to the streams, $all and operations endpoints of a real node: every malformed body, wrong type,
unknown field or parameter, oversized body or batch, bad or reserved stream name gets the specified 4xx JSON
error (status, `error` code and `field`) and changes nothing: the $all head, the seeded stream, its metadata
and the stream list are the same before and after. A valid request still works after all of them."""
from __future__ import annotations

import http.client
import json
import uuid
import zlib
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from nodeproc import NodeProcess

STREAM = "order-1"
SEEDED_IDS = [str(uuid.uuid4()), str(uuid.uuid4())]


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(node: NodeProcess, method: str, path: str, body: bytes | str | dict | list | None = None,
            headers: dict | None = None) -> Reply:
    """One request with the path sent exactly as given (already percent-encoded where it must be)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    try:
        sent = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def state(node: NodeProcess) -> dict:
    """Everything a bad request could have changed: any write (append, metadata, delete) takes a position."""
    head = request(node, "GET", "/v1/all?direction=backward&limit=1").json()["head"]
    info = request(node, "GET", f"/v1/streams/{STREAM}/info").json()
    metadata = request(node, "GET", f"/v1/streams/{STREAM}/metadata").json()
    streams = request(node, "GET", "/v1/streams?limit=1000").json()
    system = request(node, "GET", "/v1/streams?prefix=%24&limit=1000").json()
    return {"head": head, "info": info, "metadata": metadata, "streams": streams, "system": system}


@pytest.fixture(scope="module")
def node(shared_node):
    seeded = request(shared_node, "POST", f"/v1/streams/{STREAM}",
                     {"expectedVersion": "no_stream",
                      "events": [{"id": SEEDED_IDS[0], "type": "OrderPlaced", "data": {"n": 1}},
                                 {"id": SEEDED_IDS[1], "type": "OrderPaid", "data": {"n": 2}}]})
    assert seeded.status == 200, seeded.body
    meta = request(shared_node, "PUT", f"/v1/streams/{STREAM}/metadata", {"maxCount": 100, "custom": {"a": 1}})
    assert meta.status == 200, meta.body
    return shared_node


def event(**extra) -> dict:
    return {"type": "T", "data": {}, **extra}


def append(**body) -> dict:
    return {"events": [event()], **body}


APPEND = f"/v1/streams/{STREAM}"
METADATA = f"/v1/streams/{STREAM}/metadata"
SAME_ID = str(uuid.uuid4())
LONG_NAME = "a" * 513
# 257 two-byte characters: 257 characters is well under 512, but 514 bytes of UTF-8 is over.
LONG_UTF8_NAME = quote("é" * 257)

# (id, method, path, body, status, error code, field)
CASES = [
    # append: body
    ("append-malformed-json", "POST", APPEND, b'{"events": [', 400, "invalid_request", "body"),
    ("append-empty-body", "POST", APPEND, b"", 400, "invalid_request", "body"),
    ("append-body-is-list", "POST", APPEND, [event()], 400, "invalid_request", "body"),
    ("append-body-is-string", "POST", APPEND, '"events"', 400, "invalid_request", "body"),
    ("append-invalid-utf8", "POST", APPEND, b'{"events": [{"type": "\xff"}]}', 400, "invalid_request", "body"),
    ("append-number-too-big", "POST", APPEND, b'{"events": [{"type": "T", "data": 1e400}]}', 400,
     "invalid_request", "body"),
    ("append-unknown-field", "POST", APPEND, append(stream="x"), 400, "invalid_request", "stream"),
    # base64 that would not come back as sent: only the canonical text of the bytes (RFC 4648 section 3.5)
    ("append-base64-over-padded", "POST", APPEND, {"events": [{"type": "T", "dataBase64": "YWJj==="}]}, 400,
     "invalid_request", "events[0].dataBase64"),
    ("append-base64-pad-bits-set", "POST", APPEND, {"events": [{"type": "T", "metadataBase64": "YR=="}]}, 400,
     "invalid_request", "events[0].metadataBase64"),
    ("append-base64-unpadded", "POST", APPEND, {"events": [{"type": "T", "dataBase64": "YWI"}]}, 400,
     "invalid_request", "events[0].dataBase64"),
    ("append-missing-events", "POST", APPEND, {"expectedVersion": "any"}, 400, "invalid_request", "events"),
    ("append-events-is-object", "POST", APPEND, {"events": event()}, 400, "invalid_request", "events"),
    ("append-events-is-string", "POST", APPEND, {"events": "T"}, 400, "invalid_request", "events"),
    ("append-empty-events", "POST", APPEND, {"events": []}, 400, "invalid_request", "events"),
    ("append-10001-events", "POST", APPEND, {"events": [{"type": "T"}] * 10_001}, 400, "invalid_request",
     "events"),
    ("append-event-is-string", "POST", APPEND, {"events": ["T"]}, 400, "invalid_request", "events[0]"),
    ("append-event-unknown-field", "POST", APPEND, {"events": [event(), event(stream="x")]}, 400,
     "invalid_request", "events[1].stream"),
    ("append-missing-type", "POST", APPEND, {"events": [{"data": {}}]}, 400, "invalid_request", "events[0].type"),
    ("append-type-is-int", "POST", APPEND, {"events": [event(type=5)]}, 400, "invalid_request", "events[0].type"),
    ("append-type-empty", "POST", APPEND, {"events": [event(type="")]}, 400, "invalid_request", "events[0].type"),
    ("append-type-257-chars", "POST", APPEND, {"events": [event(type="T" * 257)]}, 400, "invalid_request",
     "events[0].type"),
    ("append-type-control-char", "POST", APPEND, {"events": [event(type="Order\u0001")]}, 400, "invalid_request",
     "events[0].type"),
    ("append-metadata-is-list", "POST", APPEND, {"events": [event(metadata=[])]}, 400, "invalid_request",
     "events[0].metadata"),
    ("append-metadata-is-string", "POST", APPEND, {"events": [event(metadata="m")]}, 400, "invalid_request",
     "events[0].metadata"),
    ("append-id-not-uuid", "POST", APPEND, {"events": [event(id="order-1-1")]}, 400, "invalid_request",
     "events[0].id"),
    ("append-id-is-int", "POST", APPEND, {"events": [event(id=7)]}, 400, "invalid_request", "events[0].id"),
    ("append-id-not-canonical", "POST", APPEND, {"events": [event(id=uuid.uuid4().hex)]}, 400, "invalid_request",
     "events[0].id"),
    ("append-id-in-braces", "POST", APPEND, {"events": [event(id="{%s}" % uuid.uuid4())]}, 400, "invalid_request",
     "events[0].id"),
    ("append-duplicate-ids", "POST", APPEND, {"events": [event(id=SAME_ID), event(id=SAME_ID)]}, 400,
     "invalid_request", "events[1].id"),
    ("append-expected-minus-1", "POST", APPEND, append(expectedVersion=-1), 400, "invalid_request",
     "expectedVersion"),
    ("append-expected-latest", "POST", APPEND, append(expectedVersion="latest"), 400, "invalid_request",
     "expectedVersion"),
    ("append-expected-true", "POST", APPEND, append(expectedVersion=True), 400, "invalid_request",
     "expectedVersion"),
    ("append-expected-1.5", "POST", APPEND, append(expectedVersion=1.5), 400, "invalid_request", "expectedVersion"),
    ("append-expected-2.0", "POST", APPEND, append(expectedVersion=2.0), 400, "invalid_request", "expectedVersion"),
    ("append-expected-string-2", "POST", APPEND, append(expectedVersion="2"), 400, "invalid_request",
     "expectedVersion"),
    ("append-expected-null", "POST", APPEND, append(expectedVersion=None), 400, "invalid_request",
     "expectedVersion"),
    ("append-expected-too-big", "POST", APPEND, append(expectedVersion=2**62 + 1), 400, "invalid_request",
     "expectedVersion"),
    # append: stream names
    ("append-reserved-stream", "POST", "/v1/streams/%24orders", append(), 400, "reserved_stream", "stream"),
    ("append-reserved-metadata-stream", "POST", f"/v1/streams/%24%24{STREAM}", append(), 400, "reserved_stream",
     "stream"),
    ("append-name-513-bytes", "POST", f"/v1/streams/{LONG_NAME}", append(), 400, "invalid_request", "stream"),
    ("append-name-514-utf8-bytes", "POST", f"/v1/streams/{LONG_UTF8_NAME}", append(), 400, "invalid_request",
     "stream"),
    ("append-name-control-char", "POST", "/v1/streams/order%01", append(), 400, "invalid_request", "stream"),
    ("append-name-nul", "POST", "/v1/streams/order%00", append(), 400, "invalid_request", "stream"),
    ("append-name-del", "POST", "/v1/streams/order%7F", append(), 400, "invalid_request", "stream"),
    ("append-name-c1-control", "POST", "/v1/streams/order%C2%85", append(), 400, "invalid_request", "stream"),
    ("append-name-not-utf8", "POST", "/v1/streams/order%FF", append(), 400, "invalid_request", "url"),
    ("append-name-surrogate", "POST", "/v1/streams/order%ED%A0%80", append(), 400, "invalid_request", "url"),
    # metadata
    ("metadata-malformed-json", "PUT", METADATA, b'{"maxCount": ', 400, "invalid_request", "body"),
    ("metadata-empty-body", "PUT", METADATA, b"", 400, "invalid_request", "body"),
    ("metadata-body-is-list", "PUT", METADATA, [], 400, "invalid_request", "body"),
    ("metadata-max-count-0", "PUT", METADATA, {"maxCount": 0}, 400, "invalid_request", "maxCount"),
    ("metadata-max-count-string", "PUT", METADATA, {"maxCount": "5"}, 400, "invalid_request", "maxCount"),
    ("metadata-max-count-bool", "PUT", METADATA, {"maxCount": True}, 400, "invalid_request", "maxCount"),
    ("metadata-max-count-float", "PUT", METADATA, {"maxCount": 1.5}, 400, "invalid_request", "maxCount"),
    ("metadata-max-age-x", "PUT", METADATA, {"maxAge": "x"}, 400, "invalid_request", "maxAge"),
    ("metadata-max-age-0", "PUT", METADATA, {"maxAge": 0}, 400, "invalid_request", "maxAge"),
    ("metadata-truncate-minus-1", "PUT", METADATA, {"truncateBefore": -1}, 400, "invalid_request",
     "truncateBefore"),
    ("metadata-unknown-key", "PUT", METADATA, {"maxCount": 5, "retention": 5}, 400, "invalid_request", "retention"),
    ("metadata-custom-list", "PUT", METADATA, {"custom": [1]}, 400, "invalid_request", "custom"),
    ("metadata-custom-string", "PUT", METADATA, {"custom": "x"}, 400, "invalid_request", "custom"),
    ("metadata-reserved-stream", "PUT", "/v1/streams/%24orders/metadata", {"maxCount": 5}, 400,
     "reserved_stream", "stream"),
    ("metadata-name-control-char", "PUT", "/v1/streams/a%1Fb/metadata", {"maxCount": 5}, 400, "invalid_request",
     "stream"),
    ("metadata-read-name-513-bytes", "GET", f"/v1/streams/{LONG_NAME}/metadata", None, 400, "invalid_request",
     "stream"),
    # read a stream
    ("read-limit-0", "GET", f"{APPEND}?limit=0", None, 400, "invalid_request", "limit"),
    ("read-limit-4097", "GET", f"{APPEND}?limit=4097", None, 400, "invalid_request", "limit"),
    ("read-limit-minus-1", "GET", f"{APPEND}?limit=-1", None, 400, "invalid_request", "limit"),
    ("read-limit-1.5", "GET", f"{APPEND}?limit=1.5", None, 400, "invalid_request", "limit"),
    ("read-limit-empty", "GET", f"{APPEND}?limit=", None, 400, "invalid_request", "limit"),
    ("read-from-0", "GET", f"{APPEND}?from=0", None, 400, "invalid_request", "from"),
    ("read-from-abc", "GET", f"{APPEND}?from=abc", None, 400, "invalid_request", "from"),
    ("read-from-huge", "GET", f"{APPEND}?from=99999999999999999999", None, 400, "invalid_request", "from"),
    ("read-direction-sideways", "GET", f"{APPEND}?direction=sideways", None, 400, "invalid_request", "direction"),
    ("read-unknown-parameter", "GET", f"{APPEND}?limit=5&colour=red", None, 400, "invalid_request", "colour"),
    ("read-repeated-parameter", "GET", f"{APPEND}?limit=1&limit=2", None, 400, "invalid_request", "limit"),
    ("read-name-513-bytes", "GET", f"/v1/streams/{LONG_NAME}", None, 400, "invalid_request", "stream"),
    ("read-name-control-char", "GET", "/v1/streams/%01", None, 400, "invalid_request", "stream"),
    ("info-name-control-char", "GET", "/v1/streams/order%0A1/info", None, 400, "invalid_request", "stream"),
    ("info-name-514-utf8-bytes", "GET", f"/v1/streams/{LONG_UTF8_NAME}/info", None, 400, "invalid_request",
     "stream"),
    # list streams
    ("list-limit-0", "GET", "/v1/streams?limit=0", None, 400, "invalid_request", "limit"),
    ("list-limit-1001", "GET", "/v1/streams?limit=1001", None, 400, "invalid_request", "limit"),
    ("list-prefix-empty", "GET", "/v1/streams?prefix=", None, 400, "invalid_request", "prefix"),
    ("list-after-control-char", "GET", "/v1/streams?after=a%01", None, 400, "invalid_request", "after"),
    ("list-prefix-not-utf8", "GET", "/v1/streams?prefix=%FF", None, 400, "invalid_request", "url"),
    ("list-unknown-parameter", "GET", "/v1/streams?from=1", None, 400, "invalid_request", "from"),
    ("list-repeated-parameter", "GET", "/v1/streams?prefix=a&prefix=b", None, 400, "invalid_request", "prefix"),
    # $all
    ("all-limit-0", "GET", "/v1/all?limit=0", None, 400, "invalid_request", "limit"),
    ("all-limit-4097", "GET", "/v1/all?limit=4097", None, 400, "invalid_request", "limit"),
    ("all-from-0", "GET", "/v1/all?from=0", None, 400, "invalid_request", "from"),
    ("all-from-abc", "GET", "/v1/all?from=abc", None, 400, "invalid_request", "from"),
    ("all-direction-sideways", "GET", "/v1/all?direction=sideways", None, 400, "invalid_request", "direction"),
    ("all-unknown-parameter", "GET", "/v1/all?stream=order-1", None, 400, "invalid_request", "stream"),
    ("all-repeated-parameter", "GET", "/v1/all?from=1&from=2", None, 400, "invalid_request", "from"),
    ("all-repeated-type-one-empty", "GET", "/v1/all?type=A&type=", None, 400, "invalid_request", "type"),
    ("all-type-257-chars", "GET", "/v1/all?type=" + "T" * 257, None, 400, "invalid_request", "type"),
    ("all-type-prefix-empty", "GET", "/v1/all?typePrefix=", None, 400, "invalid_request", "typePrefix"),
    ("all-stream-prefix-control", "GET", "/v1/all?streamPrefix=%07", None, 400, "invalid_request",
     "streamPrefix"),
    ("all-stream-pattern-too-long", "GET", "/v1/all?streamPattern=" + "*" * 513, None, 400, "invalid_request",
     "streamPattern"),
    # delete
    ("delete-hard-yes", "DELETE", f"{APPEND}?hard=yes", None, 400, "invalid_request", "hard"),
    ("delete-hard-1", "DELETE", f"{APPEND}?hard=1", None, 400, "invalid_request", "hard"),
    ("delete-hard-empty", "DELETE", f"{APPEND}?hard=", None, 400, "invalid_request", "hard"),
    ("delete-hard-repeated", "DELETE", f"{APPEND}?hard=true&hard=false", None, 400, "invalid_request", "hard"),
    ("delete-expected-minus-1", "DELETE", f"{APPEND}?expectedVersion=-1", None, 400, "invalid_request",
     "expectedVersion"),
    ("delete-expected-latest", "DELETE", f"{APPEND}?expectedVersion=latest", None, 400, "invalid_request",
     "expectedVersion"),
    ("delete-expected-true", "DELETE", f"{APPEND}?expectedVersion=true", None, 400, "invalid_request",
     "expectedVersion"),
    ("delete-expected-1.5", "DELETE", f"{APPEND}?expectedVersion=1.5", None, 400, "invalid_request",
     "expectedVersion"),
    ("delete-expected-empty", "DELETE", f"{APPEND}?expectedVersion=", None, 400, "invalid_request",
     "expectedVersion"),
    ("delete-unknown-parameter", "DELETE", f"{APPEND}?soft=true", None, 400, "invalid_request", "soft"),
    # a request that takes no body refuses one (ignoring it would ignore what the client meant)
    ("delete-with-body", "DELETE", f"{APPEND}?expectedVersion=1", {"expectedVersion": 0}, 400, "invalid_request",
     "body"),
    ("snapshot-delete-with-body", "DELETE", "/v1/snapshots/s", {"all": True}, 400, "invalid_request", "body"),
    ("scavenge-with-body", "POST", "/v1/admin/scavenge", {"streams": ["x"]}, 400, "invalid_request", "body"),
    ("scavenge-with-parameter", "POST", "/v1/admin/scavenge?stream=x", None, 400, "invalid_request", "stream"),
    ("verify-with-body", "POST", "/v1/admin/verify", {"quick": True}, 400, "invalid_request", "body"),
    ("info-unknown-parameter", "GET", "/v1/info?verbose=1", None, 400, "invalid_request", "verbose"),
    ("read-with-body", "GET", APPEND, {"limit": 1}, 400, "invalid_request", "body"),
    ("snapshot-read-with-body", "GET", "/v1/snapshots/s", {"maxVersion": 1}, 400, "invalid_request", "body"),
    ("get-with-body-on-a-post-route", "GET", "/v1/subscriptions/s/ack", {"ids": ["0:0"]}, 405,
     "method_not_allowed", None),  # the 405 says more than "a GET takes no body"
    ("cluster-unknown-parameter", "GET", "/v1/cluster?verbose=1", None, 400, "invalid_request", "verbose"),
    ("step-down-with-body", "POST", "/v1/cluster/step-down", {"to": "n2"}, 400, "invalid_request", "body"),
    ("delete-reserved-stream", "DELETE", f"/v1/streams/%24%24{STREAM}?hard=true", None, 400, "reserved_stream",
     "stream"),
    ("delete-name-control-char", "DELETE", "/v1/streams/order%1B1", None, 400, "invalid_request", "stream"),
    # an empty name is a bad name (there is no such route, but a 404 would say the thing is missing)
    ("append-empty-stream-name", "POST", "/v1/streams/", append(), 400, "invalid_request", "stream"),
    ("info-empty-stream-name", "GET", "/v1/streams//info", None, 400, "invalid_request", "stream"),
    ("snapshot-empty-source", "PUT", "/v1/snapshots/", {"version": 1, "type": "S"}, 400, "invalid_request",
     "source"),
    ("snapshots-empty-source", "GET", "/v1/snapshots//all", None, 400, "invalid_request", "source"),
    ("subscription-empty-name", "PUT", "/v1/subscriptions/", {"stream": "s"}, 400, "invalid_request", "name"),
]


@pytest.mark.parametrize("method,path,body,status,code,field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_and_changes_nothing(node, method, path, body, status, code, field):
    before = state(node)
    reply = request(node, method, path, body)
    assert reply.status == status, reply.body
    assert reply.headers.get_content_type() == "application/json"
    error = reply.json()
    assert error["error"] == code
    assert error.get("field") == field
    assert isinstance(error["message"], str) and error["message"]
    assert state(node) == before


def test_unknown_method_is_405_with_allow_header(node):
    before = state(node)
    reply = request(node, "PATCH", APPEND, append())
    assert reply.status == 405
    assert reply.json()["error"] == "method_not_allowed"
    assert set(reply.headers["Allow"].split(",")) >= {"GET", "POST", "DELETE"}
    assert state(node) == before


def test_rejected_batch_writes_none_of_its_events(node):
    """One bad event in a batch rejects the whole batch: the good events before it are not written."""
    before = state(node)
    good = [event(id=str(uuid.uuid4())) for _ in range(3)]
    reply = request(node, "POST", APPEND, {"events": [*good, event(type="")]})
    assert (reply.status, reply.json()["field"]) == (400, "events[3].type")
    assert state(node) == before
    assert not [e for e in request(node, "GET", APPEND).json()["events"] if e["id"] in {g["id"] for g in good}]


def test_valid_requests_still_work_after_the_bad_ones(node):
    before = state(node)
    reply = request(node, "POST", APPEND, {"expectedVersion": 2, "events": [event(type="OrderShipped")]})
    assert reply.status == 200, reply.body
    assert reply.json() == {"stream": STREAM, "fromVersion": 3, "version": 3, "position": before["head"] + 1}
    page = request(node, "GET", f"{APPEND}?from=1&limit=10&direction=forward").json()
    assert [e["type"] for e in page["events"]] == ["OrderPlaced", "OrderPaid", "OrderShipped"]
    assert [e["id"] for e in page["events"][:2]] == SEEDED_IDS
    meta = request(node, "PUT", METADATA, {"maxCount": 50})
    assert (meta.status, meta.json()) == (200, {"maxCount": 50})
    assert request(node, "GET", "/v1/all?type=OrderShipped").json()["events"][0]["stream"] == STREAM


# --- body size limit: a node of its own with --max-body-bytes 2048 ------------------------------------

def test_oversized_bodies_are_413_and_change_nothing(node_factory):
    small = node_factory("small-body", args=("--max-body-bytes", "2048"))
    first = request(small, "POST", APPEND, append())
    assert first.status == 200, first.body
    before = state(small)

    big_append = {"events": [event(data="x" * 3000)]}
    reply = request(small, "POST", APPEND, big_append)
    assert reply.status == 413, reply.body
    assert reply.json()["error"] == "too_large"
    assert reply.json()["maxBytes"] == 2048
    assert state(small) == before

    reply = request(small, "PUT", METADATA, {"custom": {"blob": "x" * 3000}})
    assert (reply.status, reply.json()["error"]) == (413, "too_large")
    assert state(small) == before

    # Just under the limit is fine: the limit is the body's size, not a guess.
    fits = json.dumps({"events": [event(data="x" * 1900)]}).encode()
    assert len(fits) <= 2048
    reply = request(small, "POST", APPEND, fits)
    assert reply.status == 200, reply.body
    assert reply.json()["version"] == 2


# --- hostile input that used to answer 500 (issue 12) -----------------------------------------------

def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


DEEP_CASES = [
    ("data-300-deep", APPEND, "POST", '{"events": [{"type": "T", "data": %s}]}' % nested(300), "events[0].data"),
    ("data-129-deep", APPEND, "POST", '{"events": [{"type": "T", "data": %s}]}' % nested(129), "events[0].data"),
    ("data-1000-deep", APPEND, "POST", '{"events": [{"type": "T", "data": %s}]}' % nested(1000), None),
    ("data-2000-deep", APPEND, "POST", '{"events": [{"type": "T", "data": %s}]}' % nested(2000), "body"),
    ("metadata-300-deep", APPEND, "POST",
     '{"events": [{"type": "T", "metadata": {"a": %s}}]}' % nested(299), "events[0].metadata"),
    ("second-event-deep", APPEND, "POST",
     '{"events": [{"type": "T"}, {"type": "T", "data": {"x": %s}}]}' % nested(500), "events[1].data"),
    ("stream-metadata-300-deep", METADATA, "PUT", '{"custom": {"a": %s}}' % nested(300), "custom"),
    ("stream-metadata-1000-deep", METADATA, "PUT", '{"custom": {"a": %s}}' % nested(1000), None),
]


@pytest.mark.parametrize("path,method,body,field", [c[1:] for c in DEEP_CASES], ids=[c[0] for c in DEEP_CASES])
def test_deeply_nested_json_is_a_400_with_field(node, path, method, body, field):
    before = state(node)
    reply = request(node, method, path, body)
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "invalid_request"
    if field is not None:  # past the parser's own limit the body as a whole is refused
        assert reply.json()["field"] == field
    else:
        assert reply.json()["field"] in ("body", "custom") or reply.json()["field"].startswith("events[0]")
    assert reply.json()["maxDepth"] == 128 and "nested more than 128 levels" in reply.json()["message"], reply.body
    assert state(node) == before


def test_nesting_up_to_the_limit_is_accepted_and_returned_as_sent(node):
    data = nested(128)
    reply = request(node, "POST", "/v1/streams/deep-ok", '{"events": [{"type": "T", "data": %s}]}' % data)
    assert reply.status == 200, reply.body
    page = request(node, "GET", "/v1/streams/deep-ok")
    assert page.status == 200 and ('"data":' + data).encode() in page.body


def test_bad_content_types_and_encodings_change_nothing(node):
    before = state(node)
    body = json.dumps(append()).encode()
    reply = request(node, "POST", APPEND, body, headers={"Content-Type": "text/plain"})
    assert (reply.status, reply.json()["error"]) == (415, "unsupported_media_type"), reply.body
    reply = request(node, "PUT", METADATA, b'{"maxCount": 3}', headers={"Content-Type": "application/xml"})
    assert reply.status == 415, reply.body
    reply = request(node, "POST", APPEND, body, headers={"Content-Encoding": "gzip"})  # not gzip at all
    assert reply.status == 400 and reply.json()["error"] == "invalid_request", reply.body
    reply = request(node, "POST", APPEND, body, headers={"Content-Encoding": "x-unknown"})
    assert (reply.status, reply.json()["error"]) == (415, "unsupported_media_type"), reply.body
    assert state(node) == before
    import gzip
    reply = request(node, "POST", APPEND, gzip.compress(body), headers={"Content-Encoding": "gzip",
                                                                          "Content-Type": "application/json; charset=utf-8"})
    assert reply.status == 200, reply.body
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    try:  # no Content-Type at all is still read as JSON
        conn.request("POST", APPEND, body=body)
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_max_age_past_what_a_store_can_mean_is_refused_and_changes_nothing(node):
    """10^13 s used to be accepted, and then every scavenge of the store answered 503 (an OverflowError). maxAge is
    bounded as KurrentDB's (a .NET TimeSpan: 922,337,203,685 whole seconds)."""
    assert request(node, "PUT", "/v1/streams/aged/metadata", {"maxAge": 3600}).status == 200
    for too_long in (10**13, 922_337_203_686):
        reply = request(node, "PUT", "/v1/streams/aged/metadata", {"maxAge": too_long})
        assert reply.status == 400 and reply.json()["field"] == "maxAge", reply.body
    assert request(node, "GET", "/v1/streams/aged/metadata").json()["maxAge"] == 3600
    assert request(node, "PUT", "/v1/streams/aged/metadata", {"maxAge": 922_337_203_685}).status == 200
    request(node, "POST", "/v1/streams/aged", append())
    assert request(node, "GET", "/v1/streams/aged").status == 200
    scavenge = request(node, "POST", "/v1/admin/scavenge")
    assert scavenge.status == 200, scavenge.body


@pytest.mark.parametrize("data,kind", [("1e400", "double's range"), ("-1E+999", "double's range"),
                                       ('"\\ud800"', "unpaired surrogate"),
                                       ('{"a": "x\\udc00"}', "unpaired surrogate")])
@pytest.mark.parametrize("large", [False, True], ids=["small", "sliced"])
def test_valid_json_the_store_does_not_take_is_a_400_that_says_why(node, data, kind, large):
    """RFC 8259 JSON that I-JSON (RFC 7493) and jsonb refuse: answered as such, not as "not valid JSON"."""
    filler = '{"type": "T", "data": "%s"}, ' % ("x" * 600_000) if large else ""  # past SLICE_BYTES: parsed per event
    before = state(node)
    reply = request(node, "POST", f"/v1/streams/{STREAM}",
                    '{"events": [%s{"type": "T", "data": %s}]}' % (filler, data))
    assert reply.status == 400, reply.body
    error = reply.json()
    assert kind in error["message"] and "not valid JSON" not in error["message"]
    assert error["field"] in ("body", "events[1]")  # the sliced parse names the event where it can
    assert state(node) == before
    within = '[1.7976931348623157e308,1e-400,"\\ud800\\udc00",123456789012345678901234567890.5]'
    body = '{"events": [{"type": "T", "data": %s}]}' % within
    assert request(node, "POST", "/v1/streams/in-range", body).status == 200
    assert ('"data":' + within).encode() in request(node, "GET", "/v1/streams/in-range").body


def test_invalid_utf8_is_named_as_such(node):
    reply = request(node, "POST", f"/v1/streams/{STREAM}", b'{"events": [{"type": "\xff"}]}')
    assert reply.status == 400 and "UTF-8" in reply.json()["message"]
    assert "surrogate" not in reply.json()["message"]


def test_a_client_that_disconnects_mid_body_is_not_a_server_error(node):
    import socket
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(f"POST {APPEND} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100000\r\n\r\n".encode() + b'{"events": [')
    request(node, "GET", "/health/live")  # the node has surely seen the close by now: one loop later
    metrics = request(node, "GET", "/metrics").body.decode()
    # the 500 series exist from the start (at 0, so that the first one shows): none may have moved
    assert all(line.endswith(" 0.0") for line in metrics.splitlines()
               if line.startswith("evstore_http_requests_total{") and 'status="500"' in line)


def test_non_utf8_authorization_is_a_401(node_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("writer-0123456789abcdef write\n")
    guarded = node_factory("guarded", args=("--api-tokens-file", str(tokens)))
    import socket
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/all HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xe9\r\n"
                     b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:300]
    assert json.loads(payload)["error"] == "unauthorized"


def test_a_body_that_cannot_be_decoded_is_answered_and_the_connection_closed_without_a_traceback(node):
    """aiohttp drains an unread body after the answer; a body whose gzip is broken raised again there and was
    logged as an unhandled exception. The 400 now closes the connection instead."""
    import socket
    logged_before = node.log_path.stat().st_size
    body = b"not gzip at all"
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
        sock.sendall(b"POST " + APPEND.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Encoding: gzip\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while chunk := sock.recv(65536):  # until the node closes the connection (bounded by the timeout)
            received += chunk
    head, _, answer = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"Connection: close" in head, received
    assert json.loads(answer)["error"] == "invalid_request"
    with open(node.log_path, "rb") as log:
        log.seek(logged_before)
        assert b"Traceback" not in log.read()


def raw_exchange(node: NodeProcess, raw: bytes) -> tuple[bytes, bytes]:
    """(head, body) of the node's answer to raw bytes, read until it closes the connection (a timeout, an error,
    if it does not)."""
    import socket
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body


CUT_DEFLATE = zlib.compress(b'{"events": [{"type": "T", "data": {"n": 1}}]}')[:-4]


def post_head(*headers: str, length: int) -> bytes:
    return "\r\n".join((f"POST {APPEND} HTTP/1.1", "Host: x", *headers, f"Content-Length: {length}", "", "")).encode()


@pytest.mark.parametrize("raw, status, code", [
    (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
    (b"G@T /v1/all HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    (b"GET /v1/all HTTP/1.1\r\nHost: x\r\nX-Large: " + b"a" * 9000 + b"\r\n\r\n", 400, "invalid_request"),
    (b"GET /v1/streams/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    (b"POST /v1/streams/s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400,
     "invalid_request"),
    (b"POST /v1/streams/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "invalid_request"),
    (post_head("Content-Type: application/json", "Content-Encoding: br", length=2) + b"{}", 415,
     "unsupported_media_type"),
    (post_head("Content-Type: application/json", "Content-Encoding: zstd", length=2) + b"{}", 415,
     "unsupported_media_type"),
    # a supported encoding whose body ends before its stream does: not an unsupported encoding, a bad body
    (post_head("Content-Type: application/json", "Content-Encoding: deflate", length=len(CUT_DEFLATE)) + CUT_DEFLATE,
     400, "invalid_request"),
], ids=["request-line", "method", "header-over-8-KiB", "target-over-8-KiB", "two-content-lengths", "chunk-size",
        "br", "zstd", "deflate-cut-short"])
def test_what_the_http_parser_refuses_is_answered_in_json_and_changes_nothing(node, raw, status, code):
    """Refused before any of the node's code runs (aiohttp's parser): answered as every other error is, in JSON,
    the connection closed; a Content-Encoding aiohttp cannot decode is a 415 like any other unsupported one. Not
    logged as a server error with a traceback: the client sent it."""
    before = state(node)
    logged_before = node.log_path.stat().st_size
    head, body = raw_exchange(node, raw)
    assert head.split(b"\r\n")[0].split(b" ")[1] == str(status).encode(), head
    assert b"content-type: application/json" in head.lower(), head
    answer = json.loads(body)
    assert answer["error"] == code and answer["message"], answer
    assert state(node) == before
    with open(node.log_path, "rb") as log:
        log.seek(logged_before)
        assert b"Traceback" not in log.read()
