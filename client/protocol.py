"""Pure request building for the evstore HTTP API: paths, query parameters, bodies. No I/O here."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Union
from urllib.parse import quote

from ..ids import uuid7

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


def snapshot_path(source: str) -> str:
    return f"/v1/snapshots/{path_segment(source)}"


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
            body["metadata"] = dict(event.metadata)
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
                   stream_prefix: str | None = None, stream_pattern: str | None = None) -> list[tuple[str, str]]:
    return query(**{"from": from_position, "limit": limit, "direction": "backward" if backward else None,
                    "type": list(types) if types else None, "typePrefix": type_prefix,
                    "streamPrefix": stream_prefix, "streamPattern": stream_pattern})


def subscribe_query(stream: str | None = None, type: str | None = None, stream_pattern: str | None = None,
                    payload: Mapping[str, Any] | None = None, from_version: int | None = None,
                    from_position: int | None = None, start: str | None = None) -> list[tuple[str, str]]:
    selectors = [s for s in (stream, type, stream_pattern, payload) if s is not None]
    if len(selectors) > 1:
        raise ValueError("subscribe takes at most one selector: stream, type, stream_pattern or payload")
    if start is not None and start not in ("start", "end"):
        raise ValueError("start must be 'start' or 'end'")
    return query(stream=stream, type=type, streamPattern=stream_pattern,
                 payload=json.dumps(payload, separators=(",", ":")) if payload is not None else None,
                 fromVersion=from_version, fromPosition=from_position, start=start)


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
        wire = {"stream": self.stream, "filter": dict(self.filter) if self.filter is not None else None,
                "startFrom": self.start_from, "bufferSize": self.buffer_size, "ackTimeout": self.ack_timeout,
                "maxRetries": self.max_retries, "concurrencyLimit": self.concurrency_limit,
                "partitionBy": self.partition_by}
        body = {k: v for k, v in wire.items() if v is not None}
        body.update(self.extra)
        return body


NACK_ACTIONS = ("retry", "park", "skip")
