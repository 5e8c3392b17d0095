"""The OpenAPI 3.0.3 document of the HTTP API, served at /v1/openapi.json.

Every limit here comes from node/api/validation.py, so the document and the parser cannot drift apart
silently; tests/integration/test_openapi.py fuzzes a real node against it.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

import evstore

from ..subscriptions import delivery, selector, settings as subscription_settings
from . import subscribe, subscribe_tokens
from . import subscriptions as subscription_api
from . import validation as v
from .shape import json_response

Schema = dict[str, Any]

# Control characters the server refuses in names and types (validation._CONTROL: C0, DEL and C1).
NO_CONTROL = "[^\\u0000-\\u001f\\u007f-\\u009f]"
ERROR_DESCRIPTIONS = {
    400: "Bad input: `invalid_request` (with `field`) or `reserved_stream`.",
    401: "Tokens are configured and the request has no valid bearer token (`unauthorized`).",
    403: "The token's role is too low for this operation (`forbidden`).",
    404: "`stream_not_found`: the stream never existed or was soft deleted.",
    409: "`wrong_expected_version` (with `expectedVersion` and `currentVersion`) or `duplicate_event_id`.",
    410: "`stream_deleted`: the stream was hard deleted; its name can never be used again.",
    408: "`request_timeout`: the body did not arrive within the node's --body-timeout.",
    413: "`too_large`: the body is larger than the node's limit (`maxBytes`).",
    415: "`unsupported_media_type`: the body has a Content-Type other than application/json (none is read "
         "as JSON) or a Content-Encoding other than gzip, deflate or identity.",
    503: "`unavailable`: the node cannot serve this now (not ready, or a record failed its checksum); "
         "retry after `retryAfter` seconds.",
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def integer(low: int, high: int = v.MAX_INT, **extra) -> Schema:
    return {"type": "integer", "minimum": low, "maximum": high, **extra}


def text(max_chars: int, **extra) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": f"^{NO_CONTROL}+$", **extra}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), closed: bool = False, **extra) -> Schema:
    """An object schema; `closed` where the server rejects unknown keys (requests), open for replies that
    may gain fields (the contract only ever adds)."""
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def json_content(schema: Schema) -> dict:
    return {"application/json": {"schema": schema}}


def ok(description: str, schema: Schema) -> dict:
    return {"description": description, "content": json_content(schema)}


def links(stream: str, *targets: str) -> dict:
    """OpenAPI links carrying a stream name from one operation to others (`stream` is a runtime expression)."""
    return {target: {"operationId": target, "parameters": {"stream": stream}} for target in targets}


def with_links(response: dict, link_map: dict) -> dict:
    return {**response, "links": link_map}


def errors(*statuses: int) -> dict:
    out = {}
    for status in statuses:
        response: dict = {"description": ERROR_DESCRIPTIONS[status], "content": json_content(ref("Error"))}
        if status == 503:
            response["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                                   "required": True, "schema": integer(1)}}
        out[str(status)] = response
    return out


def query(name: str, schema: Schema, description: str, **extra) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema, **extra}


def operation(op_id: str, summary: str, tag: str, responses: dict, *, parameters: list | None = None,
              body: Schema | None = None, secured: bool = True) -> dict:
    op: dict = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": dict(responses)}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, "content": json_content(body)}
        op["responses"].update(errors(408, 413, 415))
    if secured:
        # Open nodes need no token; nodes with tokens configured need one (401 without, 403 if too weak).
        op["security"] = [{}, {"bearerAuth": []}]
        op["responses"].update(errors(401, 403))
    else:
        op["security"] = []
    op["responses"] = dict(sorted(op["responses"].items()))
    return op


STREAM_DESCRIPTION = (f"1 to {v.MAX_STREAM_NAME_BYTES} bytes of UTF-8 without control characters, as one "
                      "URL-encoded path segment (the byte limit is checked by the server: 512 characters "
                      "fit only when they are ASCII).")


def writable_stream_schema() -> Schema:
    # `$`-prefixed names are system streams: readable, never writable (400 reserved_stream).
    schema = text(v.MAX_STREAM_NAME_BYTES)
    schema["pattern"] = f"^[^$\\u0000-\\u001f\\u007f-\\u009f]{NO_CONTROL}*$"
    return schema


def readable_stream_schema() -> Schema:
    """A stream name to read: also a metadata stream, `$$` and a name of up to 512 bytes."""
    metadata_stream = text(v.MAX_SYSTEM_STREAM_NAME_BYTES)
    metadata_stream["pattern"] = f"^\\$\\${NO_CONTROL}+$"
    return {"anyOf": [text(v.MAX_STREAM_NAME_BYTES), metadata_stream]}


def stream_param(writing: bool) -> dict:
    schema = writable_stream_schema() if writing else readable_stream_schema()
    description = STREAM_DESCRIPTION
    if writing:
        description += " Names starting with `$` are system streams and cannot be written (400 reserved_stream)."
    return {"name": "stream", "in": "path", "required": True, "description": description, "schema": schema}


def consistency_param() -> dict:
    return query("consistency", {"type": "string", "enum": ["any", "leader"], "default": "any"},
                 "`leader`: answered by the leader (a follower forwards the read); `any`: by this node's "
                 "committed log, which may trail the leader by a few milliseconds")


def read_params(max_limit: int) -> list[dict]:
    return [consistency_param(),
        query("from", integer(1), "first version (stream) or position ($all) to read; default: the start "
              "(forward) or the end (backward)"),
        query("limit", integer(1, max_limit, default=v.DEFAULT_READ_LIMIT), "most events in the reply"),
        query("direction", {"type": "string", "enum": ["forward", "backward"], "default": "forward"},
              "reading order"),
    ]


def include_system_param() -> dict:
    return query("includeSystem", {"type": "boolean", "default": False},
                 "include `$`-streams (metadata, snapshots, subscription state); a stream filter starting with `$` "
                 "includes them too. Positions keep the gaps they leave")


def subscribe_operation() -> dict:
    text_filter, type_filter = text(v.MAX_STREAM_NAME_BYTES), text(v.MAX_TYPE_CHARS)
    op = operation("subscribe", "Transient subscription: catch-up, then live (Server-Sent Events or WebSocket)",
                   "subscriptions", {
        "101": {"description": "WebSocket (send `Upgrade: websocket`): every message is one JSON text frame"},
        "200": {"description": (
            "Server-Sent Events (send `Accept: text/event-stream`). Each message's `data:` is one JSON object: "
            "`{\"event\": Event}` in log order, `{\"caughtUp\": true, \"position\": P}` once when the replay "
            "ends, heartbeats `{\"heartbeat\": true, \"position\": P}` (SSE event `heartbeat`) carrying the last "
            "scanned position, and, when the node stops or cannot read on, `{\"error\", \"message\", "
            "\"position\"}` (SSE event `closed` or `error`) before it closes. Every SSE message's `id:` is its "
            "position: a reconnect with `Last-Event-ID` resumes right after it."),
            "content": {"text/event-stream": {"schema": {"type": "string", "description": "messages as "
                                                         "#/components/schemas/SubscriptionMessage"}}}},
        **errors(400, 410, 503)},
        parameters=[
            query("stream", text_filter, "selector: only this stream (a `$` name includes that system stream)"),
            query("type", {"type": "array", "items": type_filter}, "selector: only these event types (repeat: OR)",
                  style="form", explode=True),
            query("typePrefix", type_filter, "selector: only types starting with this"),
            query("streamPrefix", text_filter, "selector: only streams starting with this"),
            query("streamPattern", text_filter, "selector: only streams matching this glob (as SQLite GLOB)"),
            query("payload", {"type": "string", "minLength": 1, "maxLength": subscribe.MAX_PAYLOAD_CHARS},
                  "selector: a JSON object the event's data contains (PostgreSQL jsonb `@>`), at most "
                  f"{selector.MAX_PAYLOAD_DEPTH} levels deep"),
            query("fromVersion", integer(1), "start: versions >= V of the `stream` selector"),
            query("fromPosition", integer(1), "start: positions >= P (as /v1/all?from=P)"),
            query("start", {"type": "string", "enum": ["start", "end"], "default": "end"},
                  "start: the whole log, or (default) only what commits after subscribing"),
            include_system_param(),
            query("heartbeat", integer(1, subscribe.MAX_HEARTBEAT, default=subscribe.DEFAULT_HEARTBEAT),
                  "seconds without a message before a heartbeat"),
            query(subscribe_tokens.QUERY_PARAM, text(256), "a token from POST /v1/subscribe/token, for clients "
                  "that cannot send Authorization (browsers' EventSource); the cookie "
                  f"`{subscribe_tokens.COOKIE}` works too"),
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string",
                                                                                    "pattern": "^[0-9]{1,19}$"},
             "description": "resume after this position (it overrides the start parameters)"},
        ])
    op["description"] = ("Selectors (at most one) and starts (at most one) are checked before the stream starts "
                         "(400 `invalid_request` with `field`). Only committed events are sent, on any node; a "
                         "consumer too slow for the live buffer is read back from the log, never skipped. 503 "
                         "`unavailable` beyond the node's `--max-subscribers`.")
    return op


def components() -> dict:
    uuid = {"type": "string", "format": "uuid", "pattern": v.UUID_PATTERN}
    timestamp = {"type": "string", "format": "date-time", "description": "RFC 3339 UTC with microseconds"}
    base64 = {"type": "string", "format": "byte",
              "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"}
    expected = {"oneOf": [{"type": "string", "enum": list(v.EXPECTED_WORDS)}, integer(0)],
                "description": "any (default), no_stream, stream_exists, or the stream's exact version"}
    metadata_fields = {
        "maxCount": integer(1, nullable=True, description="keep only the last N events"),
        "maxAge": integer(1, v.MAX_AGE_SECONDS, nullable=True, description="hide events older than this many seconds"),
        "truncateBefore": integer(0, nullable=True, description="hide versions below this one"),
        "custom": {"type": "object", "nullable": True, "description": "any JSON object of your own"},
    }
    schemas = {
        "Error": obj({"error": {"type": "string"}, "message": {"type": "string"},
                      "field": {"type": "string"}, "expectedVersion": expected,
                      "currentVersion": integer(0), "retryAfter": {"type": "number", "minimum": 0},
                      "reason": {"type": "string"}, "stream": {"type": "string"}, "eventId": uuid,
                      "position": integer(1), "maxBytes": integer(1), "maxEvents": integer(1),
                      "source": {"type": "string"},
                      "failures": {"type": "array", "description": "of an append to several streams: every "
                                   "stream whose expected version failed", "items": obj(
                                       {"stream": {"type": "string"}, "expectedVersion": expected,
                                        "currentVersion": integer(0)},
                                       ("stream", "expectedVersion", "currentVersion"))}},
                     ("error", "message")),
        "ExpectedVersion": expected,
        "NewEvent": obj({"id": dict(uuid, description="idempotency key; generated when absent"),
                         "type": text(v.MAX_TYPE_CHARS),
                         "data": {"description": f"any JSON value, nested at most {v.MAX_JSON_DEPTH} levels; "
                                                 "stored and returned as the exact JSON text sent"},
                         "metadata": {"type": "object", "description": "a JSON object, stored and returned as "
                                      f"the exact text sent (nested at most {v.MAX_JSON_DEPTH} levels)"},
                         "dataBase64": dict(base64, description="binary data (protobuf, Avro...) instead of "
                                            "`data`; returned as `dataBase64`"),
                         "metadataBase64": dict(base64, description="binary metadata instead of `metadata`; "
                                                "returned as `metadataBase64`")},
                        ("type",), closed=True,
                        **{"not": {"anyOf": [{"required": ["data", "dataBase64"]},
                                             {"required": ["metadata", "metadataBase64"]}]}}),
        "AppendRequest": obj({"expectedVersion": dict(ref("ExpectedVersion")),
                              "events": {"type": "array", "minItems": 1, "maxItems": v.MAX_EVENTS_PER_APPEND,
                                         "items": ref("NewEvent"),
                                         "description": "event ids must differ within one request"}},
                             ("events",), closed=True),
        "AppendResult": obj({"stream": {"type": "string"}, "fromVersion": integer(1), "version": integer(1),
                             "position": integer(1)}, ("stream", "fromVersion", "version", "position")),
        "StreamAppend": obj({"stream": writable_stream_schema(),
                             "expectedVersion": dict(ref("ExpectedVersion")),
                             "events": {"type": "array", "minItems": 1, "maxItems": v.MAX_EVENTS_PER_APPEND,
                                        "items": ref("NewEvent")}},
                            ("stream", "events"), closed=True),
        "MultiAppendRequest": obj({"appends": {
            "type": "array", "minItems": 1, "maxItems": v.MAX_APPEND_ENTRIES, "items": ref("StreamAppend"),
            "description": f"applied in order (a stream named twice gets its entries one after the other, each "
                           "expected version checked against the stream as the entries before it leave it); at most "
                           f"{v.MAX_EVENTS_PER_APPEND} events in all, their ids different across the request"}},
            ("appends",), closed=True),
        "MultiAppendResult": obj({"results": {"type": "array", "items": ref("AppendResult"),
                                              "description": "one per entry, in the request's order"},
                                  "position": integer(1, description="of the last event written")},
                                 ("results", "position")),
        "SnapshotRequest": obj({"version": integer(0, description="the version of the source the snapshot is of"),
                                "type": text(v.MAX_TYPE_CHARS),
                                "data": {"description": "any JSON value, stored and returned as the exact text "
                                                        f"sent (nested at most {v.MAX_JSON_DEPTH} levels)"},
                                "metadata": {"type": "object", "description": "a JSON object of your own"},
                                "dataBase64": dict(base64, description="binary data instead of `data`"),
                                "metadataBase64": dict(base64, description="binary metadata instead of `metadata`"),
                                "keep": integer(1, description="from now on keep only the latest N snapshots "
                                                               "saved of this source (default: all)")},
                               ("version", "type"), closed=True,
                               **{"not": {"anyOf": [{"required": ["data", "dataBase64"]},
                                                    {"required": ["metadata", "metadataBase64"]}]}}),
        "SnapshotSaved": obj({"source": {"type": "string"}, "version": integer(0), "position": integer(1)},
                             ("source", "version", "position")),
        "Snapshot": obj({"source": {"type": "string"}, "version": integer(0), "type": {"type": "string"},
                         "data": {"description": "the JSON text sent (absent when the data is binary)"},
                         "metadata": {"type": "object", "description": "absent when the metadata is binary"},
                         "dataBase64": base64, "metadataBase64": base64, "created": timestamp,
                         "position": integer(1, description="of the log entry that holds it")},
                        ("source", "version", "type", "created", "position")),
        "SnapshotPage": obj({"source": {"type": "string"}, "snapshots": {"type": "array", "items": ref("Snapshot")},
                             "next": integer(0, nullable=True, description="`minVersion` (forward) or `maxVersion` "
                                             "(backward) of the next page")},
                            ("source", "snapshots", "next")),
        "SnapshotList": obj({"snapshots": {"type": "array", "items": obj(
                                 {"source": {"type": "string"}, "version": integer(0), "type": {"type": "string"},
                                  "created": timestamp, "position": integer(1)},
                                 ("source", "version", "type", "created", "position"),
                                 description="the latest snapshot of a source, without its payload")},
                             "next": {"type": "string", "nullable": True, "description": "`after` of the next page"}},
                            ("snapshots", "next")),
        "Event": obj({"id": uuid, "stream": {"type": "string"}, "version": integer(1), "position": integer(1),
                      "type": {"type": "string"},
                      "data": {"description": "the JSON text sent (absent when the data is binary)"},
                      "metadata": {"type": "object", "description": "absent when the metadata is binary"},
                      "dataBase64": dict(base64, description="binary data, when it was sent as `dataBase64`"),
                      "metadataBase64": dict(base64, description="binary metadata, when sent as "
                                             "`metadataBase64`"),
                      "created": timestamp},
                     ("id", "stream", "version", "position", "type", "created")),
        "StreamPage": obj({"stream": {"type": "string"}, "version": integer(1),
                           "events": {"type": "array", "items": ref("Event")},
                           "next": integer(1, nullable=True, description="`from` of the next page")},
                          ("stream", "version", "events", "next")),
        "AllPage": obj({"events": {"type": "array", "items": ref("Event")},
                        "next": integer(1, nullable=True, description="`from` of the next page"),
                        "head": integer(0, description="last position in the log")},
                       ("events", "next", "head")),
        "StreamInfo": obj({"stream": {"type": "string"}, "version": integer(0),
                           "created": dict(timestamp, nullable=True), "updated": dict(timestamp, nullable=True),
                           "deleted": {"type": "string", "enum": ["no", "soft", "hard"]},
                           "metadata": ref("StreamMetadata")},
                          ("stream", "version", "created", "updated", "deleted", "metadata")),
        "StreamList": obj({"streams": {"type": "array", "items": obj(
                               {"stream": {"type": "string"}, "version": integer(1), "updated": timestamp},
                               ("stream", "version", "updated"))},
                           "next": {"type": "string", "nullable": True, "description": "`after` of the next page"}},
                          ("streams", "next")),
        "StreamMetadata": obj(metadata_fields),
        "StreamMetadataRequest": obj(metadata_fields, closed=True),
        "Health": obj({"status": {"type": "string", "enum": ["ok"]}}, ("status",)),
        "Ready": obj({"status": {"type": "string", "enum": ["ready"]}, "role": {"type": "string"}},
                     ("status", "role")),
        "NodeInfo": obj({"version": {"type": "string"}, "store": {"type": "string"}, "node": {"type": "string"},
                         "mode": {"type": "string", "enum": ["single", "cluster"]}, "durability": {"type": "string", "enum": ["sync", "interval"]},
                         "features": {"type": "array", "items": {"type": "string"}}},
                        ("version", "store", "node", "mode", "features")),
        "Cluster": obj({"store": {"type": "string"}, "node": {"type": "string"},
                        "role": {"type": "string", "enum": ["single", "leader", "follower", "candidate"]},
                        "leader": obj({"node": {"type": "string"}, "url": {"type": "string"}}, ("node", "url"),
                                      nullable=True),
                        "epoch": integer(0), "committedPosition": integer(0), "minInSync": integer(1),
                        "isr": {"type": "array", "items": {"type": "string"}},
                        "members": {"type": "array", "items": obj(
                            {"node": {"type": "string"}, "url": {"type": "string"}, "role": {"type": "string"},
                             "position": integer(0, nullable=True), "inSync": {"type": "boolean"},
                             "lag": integer(0, nullable=True),
                             "lastSeen": dict(timestamp, nullable=True)},
                            ("node", "url", "role", "position", "inSync", "lag", "lastSeen"))}},
                       ("store", "node", "role", "leader", "epoch", "committedPosition", "minInSync", "isr",
                        "members")),
        "VerifyResult": obj({"checked": integer(0), "corrupt": {"type": "array", "items": integer(1)},
                             "error": {"type": "string"}}, ("checked", "corrupt")),
        "ScavengeResult": obj({"removed": integer(0),
                               "position": integer(1, description="on a cluster: the log entry of the scavenge, "
                                                   "which every node applies as of that position")},
                              ("removed",)),
        "SubscriptionEvent": obj({"event": ref("Event")}, ("event",)),
        "SubscriptionCaughtUp": obj({"caughtUp": {"type": "boolean", "enum": [True]}, "position": integer(0)},
                                    ("caughtUp", "position")),
        "SubscriptionHeartbeat": obj({"heartbeat": {"type": "boolean", "enum": [True]}, "position": integer(0)},
                                     ("heartbeat", "position")),
        "SubscriptionEnd": obj({"error": {"type": "string"}, "message": {"type": "string"},
                                "reason": {"type": "string"}, "position": integer(0)}, ("error", "message", "position")),
        "SubscriptionMessage": {"oneOf": [ref("SubscriptionEvent"), ref("SubscriptionCaughtUp"),
                                          ref("SubscriptionHeartbeat"), ref("SubscriptionEnd")]},
        "SubscribeToken": obj({"token": {"type": "string"}, "expiresIn": integer(1), "expires": timestamp},
                              ("token", "expiresIn", "expires")),
        **subscription_schemas(expected, timestamp),
    }
    return {"schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "needed only when the node has API tokens"}}}


def subscription_schemas(expected: Schema, timestamp: Schema) -> dict:
    lim = subscription_settings.LIMITS

    def tunable(key: str, description: str) -> Schema:
        low, high, default = lim[key]
        if key in subscription_settings.SECONDS_FIELDS:
            return {"type": "number", "minimum": low, "maximum": high, "default": default,
                    "description": description}
        return integer(int(low), int(high), default=int(default), description=description)

    tunables = {
        "bufferSize": tunable("bufferSize", "most un-acked events one consumer holds"),
        "ackTimeout": tunable("ackTimeout", "seconds after which an un-acked event is delivered again"),
        "maxRetries": tunable("maxRetries", "failures (nack retry, ack timeout, consumer gone) before an event "
                                            "is parked"),
        "concurrencyLimit": tunable("concurrencyLimit", "most consumers at once (409 too_many_consumers)"),
        "partitionBy": {"type": "string", "enum": list(subscription_settings.PARTITIONS), "default": "none",
                        "description": "`stream`: one stream's events go to one consumer at a time, in order"},
        "checkpointAfterEvents": tunable("checkpointAfterEvents", "write the checkpoint after this many events "
                                                                  "settled"),
        "checkpointAfterSeconds": tunable("checkpointAfterSeconds", "or after this many seconds, when it moved"),
    }
    stream = text(subscription_settings.MAX_STREAM_BYTES,
                  description="the stream to follow (not a `$` system stream); 512 bytes of UTF-8 at most")
    stream["pattern"] = f"^[^$\\u0000-\\u001f\\u007f-\\u009f]{NO_CONTROL}*$"
    type_text = text(subscription_settings.MAX_TYPE_CHARS)
    name_text = text(subscription_settings.MAX_STREAM_BYTES)
    filter_schema = obj({"type": {"type": "array", "maxItems": subscription_settings.MAX_FILTER_TYPES,
                                  "items": type_text, "description": "any of these event types"},
                         "typePrefix": type_text, "streamPrefix": name_text, "streamPattern": name_text},
                        closed=True, description="the keys of /v1/all; `$` system streams are never included")
    start = {"oneOf": [{"type": "string", "enum": ["start", "end"]}, integer(1)],
             "description": "`start`, `end` (default: what commits after creation) or the first position ($all) "
                            "or version (stream) to deliver"}
    delivery_id = {"type": "string", "pattern": delivery.DELIVERY_ID.pattern,
                   "description": "as sent with the event"}
    ids = {"type": "array", "minItems": 1, "maxItems": subscription_api.MAX_IDS, "items": delivery_id}
    info_fields = {"name": {"type": "string"}, "stream": {"type": "string"}, "filter": {"type": "object"},
                   "startFrom": start, **tunables,
                   "checkpoint": integer(0, description="everything at or below it is acked, parked or skipped"),
                   "checkpointWritten": integer(0, description="the checkpoint last written to the log"),
                   "head": integer(0), "lag": integer(0), "inFlight": integer(0), "parked": integer(0),
                   "replaying": integer(0), "redeliveries": integer(0), "consumers": integer(0),
                   "connections": {"type": "array", "items": obj({"id": {"type": "string"},
                                                                  "transport": {"type": "string",
                                                                                "enum": ["websocket", "http"]},
                                                                  "inFlight": integer(0)})}}
    return {
        "SubscriptionFilter": filter_schema,
        "SubscriptionRequest": {
            **obj({"stream": stream, "filter": filter_schema, "startFrom": start, **tunables}, closed=True),
            "oneOf": [{"required": ["stream"], "not": {"required": ["filter"]}},
                      {"required": ["filter"], "not": {"required": ["stream"]}}],
            "description": "exactly one of `stream` and `filter`"},
        "SubscriptionUpdate": obj(tunables, closed=True,
                                  description="tunable settings only; the source and start cannot change"),
        "SubscriptionInfo": obj(info_fields, ("name", "startFrom", "bufferSize", "ackTimeout", "maxRetries",
                                              "concurrencyLimit", "partitionBy", "checkpoint", "head", "lag",
                                              "inFlight", "parked", "consumers")),
        "SubscriptionList": obj({"subscriptions": {"type": "array", "items": ref("SubscriptionInfo")}},
                                ("subscriptions",)),
        "Delivery": obj({"deliveryId": delivery_id, "attempt": integer(1), "event": ref("Event"),
                         "replayed": {"type": "boolean", "description": "a replayed parked event"}},
                        ("deliveryId", "attempt", "event")),
        "Deliveries": obj({"events": {"type": "array", "items": ref("Delivery")}}, ("events",)),
        "AckRequest": obj({"ids": ids}, ("ids",), closed=True),
        "NackRequest": obj({"ids": ids, "action": {"type": "string", "enum": list(delivery.NACK_ACTIONS),
                                                   "default": "retry"}}, ("ids",), closed=True),
        "AckResult": obj({"acked": integer(0), "unknown": {"type": "array", "items": {"type": "string"},
                                                            "description": "ids of events already settled"}},
                         ("acked", "unknown")),
        "NackResult": obj({"nacked": integer(0), "unknown": {"type": "array", "items": {"type": "string"}}},
                          ("nacked", "unknown")),
        "ParkedList": obj({"events": {"type": "array", "items": obj({
            "parkedId": integer(1), "stream": {"type": "string"}, "version": integer(1), "position": integer(1),
            "eventId": {"type": "string"}, "reason": {"type": "string", "enum": ["nack", "maxRetries"]},
            "attempts": integer(0), "parked": timestamp,
            "event": {"allOf": [ref("Event")], "nullable": True,
                      "description": "null when the log no longer has the event"}})},
            "total": integer(0)}, ("events", "total")),
        "ReplayResult": obj({"replaying": integer(0), "missing": integer(0)}, ("replaying", "missing")),
    }


def error(description: str) -> dict:
    return {"description": description, "content": json_content(ref("Error"))}


def subscription_paths() -> dict:
    name = {"name": "name", "in": "path", "required": True,
            "description": f"1 to {subscription_settings.MAX_NAME_CHARS} letters, digits, '.', '_' and '-', "
                           "starting with a letter or digit",
            "schema": {"type": "string", "minLength": 1, "maxLength": subscription_settings.MAX_NAME_CHARS,
                       "pattern": subscription_settings.NAME_PATTERN}}
    not_found = {"404": error("`subscription_not_found`")}
    busy = {"409": error("`too_many_consumers`: the subscription has `concurrencyLimit` consumers")}
    tag = "subscriptions"
    return {
        "/v1/subscriptions": {
            "get": operation("listSubscriptions", "Persistent subscriptions with their stats", tag, {
                "200": ok("The subscriptions", ref("SubscriptionList")), **errors(400, 503)}),
        },
        "/v1/subscriptions/{name}": {
            "put": operation("createSubscription", "Create a persistent subscription", tag, {
                "201": ok("Created", ref("SubscriptionInfo")),
                "200": ok("It exists with these very settings", ref("SubscriptionInfo")),
                "409": error("`subscription_exists` (other settings) or `too_many_subscriptions`"),
                "410": error("`stream_deleted`: the stream was hard deleted (nothing could ever be delivered)"),
                **errors(400, 503)}, parameters=[name], body=ref("SubscriptionRequest")),
            "patch": operation("updateSubscription", "Change tunable settings, keeping the checkpoint", tag, {
                "200": ok("Updated (connected consumers are closed with code 1012 and reconnect)",
                          ref("SubscriptionInfo")), **not_found, **errors(400, 503)},
                parameters=[name], body=ref("SubscriptionUpdate")),
            "get": operation("subscriptionInfo", "Settings and stats of a subscription", tag, {
                "200": ok("The subscription", ref("SubscriptionInfo")), **not_found, **errors(400, 503)},
                parameters=[name]),
            "delete": operation("deleteSubscription", "Delete a subscription; its consumers are closed", tag, {
                "204": {"description": "Deleted"}, **not_found, **errors(400, 503)}, parameters=[name]),
        },
        "/v1/subscriptions/{name}/connect": {
            "get": operation("connectSubscription", "Consume over a WebSocket", tag, {
                "101": {"description": "WebSocket: the server sends `{\"events\": [Delivery...]}`; the client sends "
                                       "`{\"ack\": [ids]}` or `{\"nack\": [ids], \"action\": ...}`. A follower "
                                       "relays it to the leader. Close codes: 1000 deleted, 1001 shutting down, "
                                       "1012 connect again, 4001 `{\"error\": \"not_leader\", \"leader\": "
                                       "{\"node\", \"url\"}}`"},
                "426": error("`upgrade_required`: not a WebSocket handshake"),
                **not_found, **busy, **errors(400, 503)}, parameters=[name]),
        },
        "/v1/subscriptions/{name}/fetch": {
            "post": operation("fetchSubscription", "Take up to `max` events (HTTP consumer)", tag, {
                "200": ok("Deliveries (none when `wait` passed first)", ref("Deliveries")),
                **not_found, **busy, **errors(400, 503)},
                parameters=[name,
                            query("max", integer(1, subscription_api.MAX_FETCH, default=subscription_api.DEFAULT_FETCH),
                                  "most events in the reply (and at most `bufferSize` un-acked per consumer)"),
                            query("wait", {"type": "number", "minimum": 0, "maximum": subscription_api.MAX_WAIT,
                                           "default": 0}, "seconds to wait for an event"),
                            query("consumer", {"type": "string", "pattern": subscription_api.CONSUMER_PATTERN},
                                  "this consumer's id (default `default`): `bufferSize` and `concurrencyLimit` "
                                  "count per id")]),
        },
        "/v1/subscriptions/{name}/ack": {
            "post": operation("ackSubscription", "Acknowledge deliveries", tag, {
                "200": ok("Acknowledged", ref("AckResult")), **not_found, **errors(400, 503)},
                parameters=[name], body=ref("AckRequest")),
        },
        "/v1/subscriptions/{name}/nack": {
            "post": operation("nackSubscription", "Retry, park or skip deliveries", tag, {
                "200": ok("Done", ref("NackResult")), **not_found, **errors(400, 503)},
                parameters=[name], body=ref("NackRequest")),
        },
        "/v1/subscriptions/{name}/parked": {
            "get": operation("parkedEvents", "Parked events, oldest first", tag, {
                "200": ok("Parked events", ref("ParkedList")), **not_found, **errors(400, 503)},
                parameters=[name, query("limit", integer(1, subscription_api.MAX_PARKED_LIST,
                                                         default=v.DEFAULT_READ_LIMIT), "most entries")]),
        },
        "/v1/subscriptions/{name}/parked/replay": {
            "post": operation("replayParked", "Deliver the parked events again (the checkpoint does not move)", tag, {
                "200": ok("Replaying", ref("ReplayResult")), **not_found, **errors(400, 503)},
                parameters=[name]),
        },
    }


def snapshot_paths() -> dict:
    source = {"name": "source", "in": "path", "required": True,
              "description": f"1 to {v.MAX_SOURCE_BYTES} bytes of UTF-8 without control characters, as one "
                             "URL-encoded path segment (its snapshots live in the system stream "
                             "`$snapshot-<source>`)",
              "schema": text(v.MAX_SOURCE_BYTES)}
    not_found = {"404": error("`snapshot_not_found`")}
    tag = "snapshots"
    to_reads = {target: {"operationId": target, "parameters": {"source": "$request.path.source"}}
                for target in ("readSnapshot", "readSnapshots", "deleteSnapshots")}
    return {
        "/v1/snapshots": {
            "get": operation("listSnapshots", "Sources with snapshots in name order, with their latest", tag, {
                "200": ok("A page of sources", ref("SnapshotList")), **errors(400, 503)},
                parameters=[query("prefix", text(v.MAX_SOURCE_BYTES), "only sources starting with this"),
                            query("after", text(v.MAX_SOURCE_BYTES), "only sources after this one (`next`)"),
                            query("limit", integer(1, v.MAX_LIST_LIMIT, default=v.DEFAULT_READ_LIMIT),
                                  "most sources in the reply"), consistency_param()]),
        },
        "/v1/snapshots/{source}": {
            "put": operation("saveSnapshot", "Save a snapshot of a source at a version (one saved at that "
                                             "version before is replaced)", tag, {
                "200": with_links(ok("Saved (an identical snapshot already saved is left as it is)",
                                     ref("SnapshotSaved")), to_reads),
                **errors(400, 503)}, parameters=[source], body=ref("SnapshotRequest")),
            "get": operation("readSnapshot", "The snapshot with the highest version at or below maxVersion", tag, {
                "200": ok("The snapshot", ref("Snapshot")), **not_found, **errors(400, 503)},
                parameters=[source, query("maxVersion", integer(0), "highest version wanted (default: the latest)"),
                            consistency_param()]),
            "delete": operation("deleteSnapshots", "Delete every snapshot of a source", tag, {
                "204": {"description": "Deleted (also when there were none)"}, **errors(400, 503)},
                parameters=[source]),
        },
        "/v1/snapshots/{source}/all": {
            "get": operation("readSnapshots", "Every snapshot of a source, in version order", tag, {
                "200": ok("A page of snapshots (the latest saved at each version)", ref("SnapshotPage")),
                **errors(400, 503)},
                parameters=[source, query("minVersion", integer(0), "lowest version (inclusive)"),
                            query("maxVersion", integer(0), "highest version (inclusive)"),
                            query("direction", {"type": "string", "enum": ["forward", "backward"],
                                                "default": "forward"}, "version order"),
                            query("limit", integer(1, v.MAX_READ_LIMIT, default=v.DEFAULT_READ_LIMIT),
                                  "most snapshots in the reply"), consistency_param()]),
        },
    }


def paths() -> dict:
    read, write = stream_param(False), stream_param(True)
    text_filter = text(v.MAX_STREAM_NAME_BYTES)
    type_filter = text(v.MAX_TYPE_CHARS)
    return {
        "/v1/streams/{stream}": {
            "post": operation("appendToStream", "Append events atomically", "streams", {
                "200": with_links(ok("Appended (or the original reply of a retried append with the same ids)",
                                     ref("AppendResult")),
                                  links("$response.body#/stream", "appendToStream", "readStream", "streamInfo",
                                        "getStreamMetadata", "setStreamMetadata", "deleteStream")),
                **errors(400, 409, 410, 503)},
                parameters=[write], body=ref("AppendRequest")),
            "get": operation("readStream", "Read a stream's events", "streams", {
                "200": with_links(ok("A page of events", ref("StreamPage")),
                                  links("$response.body#/stream", "streamInfo")),
                **errors(400, 404, 410, 503)},
                parameters=[read, *read_params(v.MAX_READ_LIMIT)]),
            "delete": operation("deleteStream", "Soft (default) or hard delete a stream", "streams", {
                # After a delete the stream reads as 404 (soft) or 410 (hard); a soft-deleted stream can be
                # appended to again. Its info and metadata stay readable on purpose (they report the delete).
                "204": {"description": "Deleted", "links": links("$request.path.stream", "readStream",
                                                                 "appendToStream")},
                **errors(400, 404, 409, 410, 503)},
                parameters=[write,
                            query("expectedVersion", ref("ExpectedVersion"), "delete only at this version"),
                            query("hard", {"type": "boolean", "default": False},
                                  "hard delete: the name can never be used again")]),
        },
        "/v1/streams/{stream}/info": {
            "get": operation("streamInfo", "A stream's version, times, delete state and metadata", "streams", {
                "200": ok("The stream", ref("StreamInfo")), **errors(400, 404, 503)},
                parameters=[read, consistency_param()]),
        },
        "/v1/streams/{stream}/metadata": {
            "get": operation("getStreamMetadata", "A stream's metadata ({} when none is set)", "streams", {
                "200": ok("The metadata", ref("StreamMetadata")), **errors(400, 410, 503)},
                parameters=[read, consistency_param()]),
            "put": operation("setStreamMetadata", "Replace a stream's metadata", "streams", {
                "200": with_links(ok("The stored metadata", ref("StreamMetadata")),
                                  links("$request.path.stream", "getStreamMetadata", "streamInfo")),
                **errors(400, 410, 503)},
                parameters=[write], body=ref("StreamMetadataRequest")),
        },
        "/v1/streams": {
            "post": operation("appendToStreams", "Append to several streams atomically", "streams", {
                "200": ok("Appended: all entries at contiguous positions (or the original reply of a retried "
                          "request with the same ids)", ref("MultiAppendResult")),
                "409": error("`wrong_expected_version`: `failures` names every failing stream (the first one's "
                             "`stream`, `expectedVersion` and `currentVersion` are also at the top level); nothing "
                             "is written. Or `duplicate_event_id`: some of the ids were written before, but not "
                             "this very request"),
                **errors(400, 410, 503)},
                body=ref("MultiAppendRequest")),
            "get": operation("listStreams", "Streams in name order", "streams", {
                "200": ok("A page of streams", ref("StreamList")), **errors(400, 503)},
                parameters=[query("prefix", readable_stream_schema(), "only names starting with this"),
                            query("after", readable_stream_schema(), "only names after this one (the `next` cursor)"),
                            query("limit", integer(1, v.MAX_LIST_LIMIT, default=v.DEFAULT_READ_LIMIT),
                                  "most streams in the reply"), consistency_param()]),
        },
        **snapshot_paths(),
        "/v1/all": {
            "get": operation("readAll", "Read the log of all streams, optionally filtered", "all", {
                "200": ok("A page of events", ref("AllPage")), **errors(400, 503)},
                parameters=[*read_params(v.MAX_READ_LIMIT),
                            query("type", {"type": "array", "items": type_filter},
                                  "only these event types (repeat the parameter for more: OR)",
                                  style="form", explode=True),
                            query("typePrefix", type_filter, "only types starting with this"),
                            query("streamPrefix", text_filter, "only streams starting with this"),
                            query("streamPattern", text_filter, "only streams matching this glob"),
                            include_system_param()]),
        },
        "/v1/subscribe": {
            "get": subscribe_operation(),
        },
        "/v1/subscribe/token": {
            "post": operation("subscribeToken", "A short-lived token for GET /v1/subscribe only (read role)",
                              "subscriptions", {
                "200": {"description": "The token; also set as the `evstore_subscribe_token` cookie (path "
                                       "/v1/subscribe, HttpOnly, SameSite=Strict)",
                        "headers": {"Set-Cookie": {"schema": {"type": "string"}}},
                        "content": json_content(ref("SubscribeToken"))},
                **errors(400, 503)},
                parameters=[query("ttl", integer(subscribe_tokens.MIN_TTL, subscribe_tokens.MAX_TTL,
                                                 default=subscribe_tokens.DEFAULT_TTL),
                                  "seconds the token is valid")]),
        },
        **subscription_paths(),
        "/health/live": {
            "get": operation("live", "The process is up", "operations",
                             {"200": ok("Alive", ref("Health"))}, secured=False),
        },
        "/health/ready": {
            "get": operation("ready", "The node can serve requests", "operations",
                             {"200": ok("Ready", ref("Ready")), **errors(503)}, secured=False),
        },
        "/metrics": {
            "get": operation("metrics", "Prometheus metrics", "operations", {
                "200": {"description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}, secured=False),
        },
        "/v1/openapi.json": {
            "get": operation("openapi", "This document", "operations",
                             {"200": ok("The OpenAPI document", {"type": "object"})}, secured=False),
        },
        "/v1/info": {
            "get": operation("nodeInfo", "Version, store, node, mode and features", "operations",
                             {"200": ok("The node", ref("NodeInfo"))}),
        },
        "/v1/cluster": {
            "get": operation("cluster", "The cluster as this node sees it", "operations",
                             {"200": ok("The cluster", ref("Cluster"))}),
        },
        "/v1/cluster/step-down": {
            "post": operation("stepDown", "Hand leadership to an in-sync follower (admin)", "operations", {
                "200": ok("Leadership handed over", obj({"stepDown": {"type": "boolean"},
                                                         "leader": {"type": "string"}}, ("stepDown", "leader"))),
                "409": {"description": "`no_in_sync_follower`: no follower can take over",
                        "content": json_content(ref("Error"))}, **errors(503)}),
        },
        "/v1/admin/verify": {
            "post": operation("verify", "Checksum scan of every record (admin)", "operations", {
                "200": ok("The scan", ref("VerifyResult")), **errors(503)}),
        },
        "/v1/admin/scavenge": {
            "post": operation("scavenge", "Remove events retention already hides (admin)", "operations", {
                "200": ok("Removed", ref("ScavengeResult")), **errors(503)}),
        },
    }


def document() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "evstore", "version": evstore.__version__,
                 "description": "Event store HTTP API v1. Errors are `{\"error\", \"message\", ...details}`; "
                                "a 5xx other than 503 is a bug."},
        "tags": [{"name": "streams"}, {"name": "all"}, {"name": "subscriptions"}, {"name": "snapshots"},
                 {"name": "operations"}],
        "paths": paths(),
        "components": components(),
    }


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(document())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/openapi.json", openapi_json)
