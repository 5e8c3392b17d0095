"""Pure request building for the evstore HTTP API: paths, query parameters, bodies. No I/O here."""
from __future__ import annotations

import base64
import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Union
from urllib.parse import quote, urlsplit

import orjson

from ..ids import uuid7

# orjson reads an integer beyond 64 bits as a float; a run of this many digits may be one. Digits are
# mapped to NUL and the run searched as bytes: a few times faster than a regular expression.
LONG_NUMBER_DIGITS = 19
_DIGITS_TO_NUL = bytes(0 if 0x30 <= b <= 0x39 else 1 for b in range(256))
_LONG_RUN = b"\x00" * LONG_NUMBER_DIGITS


def has_long_number(raw: bytes) -> bool:
    return _LONG_RUN in raw.translate(_DIGITS_TO_NUL)

class RawJSON:
    """JSON text sent as it is, not parsed and encoded again (the CLI's --data): the server stores the exact text
    (long decimals, `1E2`), and checks it itself."""
    __slots__ = ("text",)

    def __init__(self, text: str | bytes) -> None:
        self.text = text.encode() if isinstance(text, str) else bytes(text)

    def __repr__(self) -> str:
        return f"RawJSON({self.text.decode(errors='replace')!r})"


def _fragment(value: Any) -> Any:
    if isinstance(value, RawJSON):
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact_int(text: str) -> Any:
    return int(text) if len(text) < LONG_NUMBER_DIGITS else RawJSON(text)


def loads_exact(text: str | bytes) -> Any:
    """JSON text (a file the CLI sends) parsed so that `dumps` gives every number back as written: each
    decimal, and each integer too long for orjson, stays its text (RawJSON). NaN and Infinity are refused."""
    return json.loads(text, parse_float=RawJSON, parse_int=_exact_int, parse_constant=refuse_constant)


def dumps(value: Any) -> bytes:
    """A request body as JSON, exactly: orjson, unless it holds an integer beyond 64 bits (which orjson refuses
    and the standard library writes exactly); ValueError for NaN or an infinity, which JSON cannot say (orjson
    would write null, changing the data)."""
    try:
        out = orjson.dumps(value, default=_fragment)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc) and "surrogates" not in str(exc):
            raise
        return _dumps_exactly(value)  # the server answers an unpaired surrogate (escaped here) with its 400
    if b"null" in out:
        _refuse_non_finite(value)
    return out


def _refuse_non_finite(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{item} cannot be sent as JSON: send it as a string")
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _dumps_exactly(value: Any) -> bytes:
    """The standard library's JSON (integers of any size), with RawJSON texts put in as they are."""
    texts: list[bytes] = []
    mark = secrets.token_hex(8)

    def placeholder(item: Any) -> str:
        if isinstance(item, RawJSON):
            texts.append(item.text)
            return f"{mark}:{len(texts) - 1}"
        raise TypeError(f"Type is not JSON serializable: {type(item).__name__}")

    out = json.dumps(value, default=placeholder, allow_nan=False, separators=(",", ":")).encode()
    for i, text in enumerate(texts):
        out = out.replace(f'"{mark}:{i}"'.encode(), text, 1)
    return out


EXPECTED_VERSION_WORDS = ("any", "no_stream", "stream_exists")
ExpectedVersion = Union[str, int]


@dataclass(frozen=True)
class NewEvent:
    """An event to append. `id` is generated (a time-ordered UUIDv7) when left out, so a retry resends the same id."""

    type: str
    data: Any = None
    metadata: Mapping[str, Any] | None = None
    id: str | None = None


EventInput = Union[NewEvent, Mapping[str, Any]]


def loads(payload: str | bytes) -> Any:
    """A reply's JSON as the server sent it: through orjson, unless it holds a number too long for it
    (the contract keeps big integers exact), which the standard library reads exactly."""
    raw = payload.encode() if isinstance(payload, str) else payload
    return json.loads(raw) if has_long_number(raw) else orjson.loads(raw)


def decode_reply(payload: bytes) -> Any:
    """A reply body's JSON, or None when it is empty or not JSON."""
    try:
        return loads(payload) if payload else None
    except ValueError:
        return None


def check_node_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host and a valid port, else ValueError saying why."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError when out of range)
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a node URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not a node URL (http://host:port)")
    return url


def path_segment(name: str) -> str:
    """`name` percent-encoded as exactly one path segment (a `/` becomes %2F; `.`/`..` are escaped)."""
    encoded = quote(name, safe="")
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return encoded


def stream_path(stream: str, suffix: str = "") -> str:
    return f"/v1/streams/{path_segment(stream)}{suffix}"


def subscription_path(name: str, suffix: str = "") -> str:
    return f"/v1/subscriptions/{path_segment(name)}{suffix}"


def snapshot_path(source: str, suffix: str = "") -> str:
    return f"/v1/snapshots/{path_segment(source)}{suffix}"


def snapshot_body(*, version: int, type: str, data: Any = None, metadata: Mapping[str, Any] | bytes | None = None,
                  keep: int | None = None) -> dict[str, Any]:
    """The body of PUT /v1/snapshots/{source}; bytes payloads go as base64."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError("a snapshot's version must be an integer >= 0")
    body: dict[str, Any] = {"version": version, "type": type}
    if isinstance(data, (bytes, bytearray, memoryview)):
        body["dataBase64"] = base64.b64encode(bytes(data)).decode("ascii")
    else:
        body["data"] = data
    if isinstance(metadata, (bytes, bytearray, memoryview)):
        body["metadataBase64"] = base64.b64encode(bytes(metadata)).decode("ascii")
    elif metadata is not None:
        body["metadata"] = metadata if isinstance(metadata, RawJSON) else dict(metadata)
    if keep is not None:
        body["keep"] = keep
    return body


def check_expected_version(value: ExpectedVersion) -> ExpectedVersion:
    """`value` if it is one of the contract's forms (word or non-negative int), else ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected version must be {'|'.join(EXPECTED_VERSION_WORDS)} or an integer >= 0")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected version must be >= 0")
        return value
    if value in EXPECTED_VERSION_WORDS:
        return value
    raise ValueError(f"expected version must be {'|'.join(EXPECTED_VERSION_WORDS)} or an integer >= 0,"
                     f" not {value!r}")


def parse_expected_version(text: str) -> ExpectedVersion:
    """Command-line form: `any`, `no_stream`, `stream_exists` or a number."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    return check_expected_version(text)


def event_body(event: EventInput) -> dict[str, Any]:
    """The JSON object for one event, with an id assigned when the caller gave none."""
    if isinstance(event, NewEvent):
        body: dict[str, Any] = {"type": event.type, "data": event.data}
        if event.metadata is not None:
            body["metadata"] = event.metadata if isinstance(event.metadata, RawJSON) else dict(event.metadata)
        body["id"] = event.id or str(uuid7())
        return body
    if isinstance(event, Mapping):
        body = dict(event)
        if not body.get("id"):
            body["id"] = str(uuid7())
        return body
    raise TypeError(f"an event is a NewEvent or a mapping, not {type(event).__name__}")


def append_body(events: Iterable[EventInput], expected_version: ExpectedVersion = "any") -> dict[str, Any]:
    """The append request body. Ids are fixed here, once, so every retry of this body is idempotent."""
    if isinstance(events, (NewEvent, Mapping)):
        raise TypeError("append takes a list of events; wrap a single event in a list")
    return {"expectedVersion": check_expected_version(expected_version),
            "events": [event_body(e) for e in events]}


@dataclass(frozen=True)
class StreamAppend:
    """One entry of an append to several streams (`append_many`)."""

    stream: str
    events: Iterable[EventInput]
    expected_version: ExpectedVersion = "any"


AppendInput = Union[StreamAppend, Mapping[str, Any]]


def append_many_body(appends: Iterable[AppendInput]) -> dict[str, Any]:
    """The body of POST /v1/streams: entries are StreamAppend or mappings with `stream`, `events` and
    `expectedVersion` (or `expected_version`). Ids are fixed here, so every retry of the body is idempotent."""
    if isinstance(appends, (StreamAppend, Mapping)):
        raise TypeError("append_many takes a list of appends; wrap a single one in a list")
    entries = []
    for entry in appends:
        if isinstance(entry, StreamAppend):
            stream, events, expected = entry.stream, entry.events, entry.expected_version
        elif isinstance(entry, Mapping):
            stream, events = entry["stream"], entry["events"]
            expected = entry.get("expectedVersion", entry.get("expected_version", "any"))
        else:
            raise TypeError(f"an append is a StreamAppend or a mapping, not {type(entry).__name__}")
        entries.append({"stream": stream, **append_body(events, expected)})
    return {"appends": entries}


def query(**params: Any) -> list[tuple[str, str]]:
    """Query parameters in wire form: None dropped, bools as true/false, lists repeated."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool):
                pairs.append((key, "true" if v else "false"))
            else:
                pairs.append((key, str(v)))
    return pairs


def read_stream_query(from_version: int | None = None, limit: int | None = None,
                      backward: bool = False) -> list[tuple[str, str]]:
    return query(**{"from": from_version, "limit": limit, "direction": "backward" if backward else None})


def read_all_query(from_position: int | None = None, limit: int | None = None, backward: bool = False,
                   types: Iterable[str] | None = None, type_prefix: str | None = None,
                   stream_prefix: str | None = None, stream_pattern: str | None = None,
                   include_system: bool = False) -> list[tuple[str, str]]:
    return query(**{"from": from_position, "limit": limit, "direction": "backward" if backward else None,
                    "type": list(types) if types else None, "typePrefix": type_prefix,
                    "streamPrefix": stream_prefix, "streamPattern": stream_pattern,
                    "includeSystem": True if include_system else None})


SUBSCRIBE_STARTS = ("start", "end")


def _position_like(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be an integer >= 0")


def subscribe_query(*, stream: str | None = None, types: Iterable[str] | str | None = None,
                    type_prefix: str | None = None, stream_prefix: str | None = None,
                    stream_pattern: str | None = None, payload: Mapping[str, Any] | None = None,
                    include_system: bool = False, from_version: int | None = None,
                    from_position: int | None = None, after: int | None = None,
                    start: str | None = None) -> list[tuple[str, str]]:
    """The `/v1/subscribe` query: one selector (`types` may hold several types: OR) and one start.
    `after=P` is the exclusive form of `from_position` (positions > P, like eventsourcing's `gt`)."""
    type_list = [types] if isinstance(types, str) else list(types) if types is not None else []
    chosen = [name for name, value in (("stream", stream), ("types", type_list or None),
                                       ("type_prefix", type_prefix), ("stream_prefix", stream_prefix),
                                       ("stream_pattern", stream_pattern), ("payload", payload))
              if value is not None]
    if len(chosen) > 1:
        raise ValueError(f"subscribe takes one selector, not {' and '.join(chosen)}")
    if payload is not None and not isinstance(payload, Mapping):
        raise ValueError("payload must be a mapping (a JSON object contained in the events' data)")
    starts = [name for name, value in (("from_version", from_version), ("from_position", from_position),
                                       ("after", after), ("start", start)) if value is not None]
    if len(starts) > 1:
        raise ValueError(f"subscribe takes one start, not {' and '.join(starts)}")
    if start is not None and start not in SUBSCRIBE_STARTS:
        raise ValueError("start must be 'start' or 'end'")
    if from_version is not None and stream is None:
        raise ValueError("from_version needs stream=")
    for name, value in (("from_version", from_version), ("from_position", from_position), ("after", after)):
        _position_like(name, value)
    if after is not None:
        from_position = after + 1
    return query(stream=stream, type=type_list or None, typePrefix=type_prefix, streamPrefix=stream_prefix,
                 streamPattern=stream_pattern,
                 payload=json.dumps(dict(payload), separators=(",", ":")) if payload is not None else None,
                 includeSystem=True if include_system else None, fromVersion=from_version,
                 fromPosition=from_position, start=start)


SUBSCRIPTION_STARTS = ("start", "end")
PARTITIONS = ("none", "stream")
NACK_ACTIONS = ("retry", "park", "skip")


def delivery_settings(*, buffer_size: int | None = None, ack_timeout: float | None = None,
                      max_retries: int | None = None, concurrency_limit: int | None = None,
                      partition_by: str | None = None) -> dict[str, Any]:
    """The settings of a persistent subscription that shape delivery, in wire names; None left out."""
    if partition_by is not None and partition_by not in PARTITIONS:
        raise ValueError(f"partition_by must be one of {', '.join(PARTITIONS)}")
    wire = {"bufferSize": buffer_size, "ackTimeout": ack_timeout, "maxRetries": max_retries,
            "concurrencyLimit": concurrency_limit, "partitionBy": partition_by}
    return {k: v for k, v in wire.items() if v is not None}


def all_filter(*, types: Iterable[str] | str | None = None, type_prefix: str | None = None,
               stream_prefix: str | None = None, stream_pattern: str | None = None) -> dict[str, Any]:
    """A persistent subscription's `filter`: the keys of /v1/all, `type` as a list (OR)."""
    type_list = [types] if isinstance(types, str) else list(types or [])
    wire = {"type": type_list or None, "typePrefix": type_prefix,
            "streamPrefix": stream_prefix, "streamPattern": stream_pattern}
    return {k: v for k, v in wire.items() if v is not None}


@dataclass(frozen=True)
class SubscriptionSettings:
    """Settings of a persistent subscription; None leaves the server default."""

    stream: str | None = None
    filter: Mapping[str, Any] | None = None
    start_from: str | int | None = None
    buffer_size: int | None = None
    ack_timeout: float | None = None
    max_retries: int | None = None
    concurrency_limit: int | None = None
    partition_by: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        if (self.stream is None) == (self.filter is None):
            raise ValueError("a subscription takes exactly one of stream= or filter=")
        if self.start_from is not None and self.start_from not in SUBSCRIPTION_STARTS:
            _position_like("start_from", self.start_from)
        wire = {"stream": self.stream, "filter": dict(self.filter) if self.filter is not None else None,
                "startFrom": self.start_from}
        body = {k: v for k, v in wire.items() if v is not None}
        body.update(delivery_settings(buffer_size=self.buffer_size, ack_timeout=self.ack_timeout,
                                      max_retries=self.max_retries, concurrency_limit=self.concurrency_limit,
                                      partition_by=self.partition_by))
        body.update(self.extra)
        return body
