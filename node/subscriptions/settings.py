"""Settings of a persistent subscription: defaults, limits and parsing (each bad field is a 400 naming it).

The same parser reads a client's request and a definition stored in `$subscriptions`, so the log never
holds settings the node would refuse.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InvalidRequest, LogError

NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
MAX_NAME_CHARS = 128
MAX_SUBSCRIPTIONS = 100
MAX_STREAM_BYTES = 512
MAX_TYPE_CHARS = 256
MAX_FILTER_TYPES = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# (low, high, default) of each tunable setting
LIMITS: dict[str, tuple[float, float, float]] = {
    "bufferSize": (1, 1000, 10),
    "ackTimeout": (0.1, 3600, 30),
    "maxRetries": (0, 1000, 10),
    "concurrencyLimit": (1, 100, 1),
    "checkpointAfterEvents": (1, 100_000, 100),
    "checkpointAfterSeconds": (0.1, 3600, 1.0),
}
SECONDS_FIELDS = ("ackTimeout", "checkpointAfterSeconds")
PARTITIONS = ("none", "stream")
FILTER_KEYS = ("type", "typePrefix", "streamPrefix", "streamPattern")
TUNABLE = (*LIMITS, "partitionBy")
SOURCE_KEYS = ("stream", "filter", "startFrom")
ALL_KEYS = frozenset((*SOURCE_KEYS, *TUNABLE))


class SubscriptionNotFound(LogError):
    status, code = 404, "subscription_not_found"


class SubscriptionExists(LogError):
    status, code = 409, "subscription_exists"


class TooManyConsumers(LogError):
    status, code = 409, "too_many_consumers"


class TooManySubscriptions(LogError):
    status, code = 409, "too_many_subscriptions"


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events of `$all` a filter subscription takes (the keys of /v1/all); `$`-streams never."""
    types: tuple[str, ...] = ()
    type_prefix: str | None = None
    stream_prefix: str | None = None
    stream_pattern: str | None = None

    def as_json(self) -> dict:
        out: dict[str, Any] = {}
        if self.types:
            out["type"] = list(self.types)
        for key, value in (("typePrefix", self.type_prefix), ("streamPrefix", self.stream_prefix),
                           ("streamPattern", self.stream_pattern)):
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    stream: str | None = None
    filter: Filter | None = None
    start_from: str | int = "end"
    buffer_size: int = 10
    ack_timeout: float = 30.0
    max_retries: int = 10
    concurrency_limit: int = 1
    partition_by: str = "none"
    checkpoint_after_events: int = 100
    checkpoint_after_seconds: float = 1.0

    def as_json(self) -> dict:
        out: dict[str, Any] = {"stream": self.stream} if self.stream is not None else {
            "filter": self.filter.as_json() if self.filter else {}}
        out.update({"startFrom": self.start_from, "bufferSize": self.buffer_size, "ackTimeout": self.ack_timeout,
                    "maxRetries": self.max_retries, "concurrencyLimit": self.concurrency_limit,
                    "partitionBy": self.partition_by, "checkpointAfterEvents": self.checkpoint_after_events,
                    "checkpointAfterSeconds": self.checkpoint_after_seconds})
        return out


_ATTRIBUTES = {"bufferSize": "buffer_size", "ackTimeout": "ack_timeout", "maxRetries": "max_retries",
               "concurrencyLimit": "concurrency_limit", "checkpointAfterEvents": "checkpoint_after_events",
               "checkpointAfterSeconds": "checkpoint_after_seconds", "partitionBy": "partition_by"}


def subscription_name(raw: str) -> str:
    if not isinstance(raw, str) or not _NAME.fullmatch(raw):
        raise InvalidRequest(f"a subscription name is 1 to {MAX_NAME_CHARS} characters of letters, digits, "
                             "'.', '_' and '-', starting with a letter or digit", field="name")
    return raw


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(key: str, value: Any) -> int | float:
    low, high, _default = LIMITS[key]
    if key in SECONDS_FIELDS:
        ok = (_is_int(value) or isinstance(value, float)) and low <= value <= high
        if ok:
            return float(value)
        raise InvalidRequest(f"{key} must be a number of seconds from {low:g} to {high:g}", field=key)
    if not (_is_int(value) and low <= value <= high):
        raise InvalidRequest(f"{key} must be an integer from {low:g} to {high:g}", field=key)
    return value


def _text(value: Any, field_name: str, max_len: int, *, max_bytes: bool = False) -> str:
    size = len(value.encode("utf-8", "surrogatepass")) if isinstance(value, str) and max_bytes else \
        len(value) if isinstance(value, str) else 0
    if not isinstance(value, str) or not 1 <= size <= max_len or _CONTROL.search(value):
        unit = "bytes of UTF-8" if max_bytes else "characters"
        raise InvalidRequest(f"{field_name} must be 1 to {max_len} {unit} without control characters",
                             field=field_name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{field_name} must be valid UTF-8", field=field_name) from None
    return value


def _filter(value: Any) -> Filter:
    if not isinstance(value, dict):
        raise InvalidRequest("filter must be a JSON object with keys of /v1/all: " + ", ".join(FILTER_KEYS),
                             field="filter")
    unknown = sorted(set(value) - set(FILTER_KEYS))
    if unknown:
        raise InvalidRequest(f"unknown key {unknown[0]!r} in filter", field=f"filter.{unknown[0]}")
    types = value.get("type", [])
    if not isinstance(types, list) or len(types) > MAX_FILTER_TYPES:
        raise InvalidRequest(f"filter.type must be a list of at most {MAX_FILTER_TYPES} event types",
                             field="filter.type")
    parsed_types = tuple(_text(t, "filter.type", MAX_TYPE_CHARS) for t in types)
    optional = {}
    for key, limit in (("typePrefix", MAX_TYPE_CHARS), ("streamPrefix", MAX_STREAM_BYTES),
                       ("streamPattern", MAX_STREAM_BYTES)):
        if key in value:
            optional[key] = _text(value[key], f"filter.{key}", limit, max_bytes=key != "typePrefix")
    # a set of types (matched as OR): the same set in another order is the same filter
    return Filter(tuple(sorted(set(parsed_types))), optional.get("typePrefix"), optional.get("streamPrefix"),
                  optional.get("streamPattern"))


def _start_from(value: Any) -> str | int:
    if value in ("start", "end"):
        return value
    if _is_int(value) and 1 <= value <= 2**62:
        return value
    raise InvalidRequest("startFrom must be \"start\", \"end\" or a position (a version for a stream "
                         "subscription) from 1", field="startFrom")


def refuse_what_never_delivers(settings: SubscriptionSettings) -> None:
    """InvalidRequest for a new subscription whose filter names `$`-streams, which a filter never delivers: it would
    wait for ever. (Only for new ones: a definition stored by an earlier release still loads.)"""
    source = settings.filter
    for key, value in (("streamPrefix", source.stream_prefix if source else None),
                       ("streamPattern", source.stream_pattern if source else None)):
        if value is not None and value.startswith("$"):
            raise InvalidRequest("system streams ($...) cannot be subscribed to persistently", field=f"filter.{key}")


def parse_settings(doc: Any) -> SubscriptionSettings:
    """A create request (or a stored definition): exactly one of `stream` and `filter`, then options."""
    if not isinstance(doc, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    unknown = sorted(set(doc) - ALL_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
    has_stream, has_filter = "stream" in doc, "filter" in doc
    if has_stream == has_filter:
        raise InvalidRequest("a subscription takes exactly one of stream and filter", field="stream")
    stream = None
    if has_stream:
        stream = _text(doc["stream"], "stream", MAX_STREAM_BYTES, max_bytes=True)
        if stream.startswith("$"):
            raise InvalidRequest("system streams ($...) cannot be subscribed to persistently", field="stream")
    settings = SubscriptionSettings(stream=stream, filter=_filter(doc["filter"]) if has_filter else None,
                                    start_from=_start_from(doc.get("startFrom", "end")))
    return apply_changes(settings, {k: v for k, v in doc.items() if k in TUNABLE})


def apply_changes(settings: SubscriptionSettings, doc: Any) -> SubscriptionSettings:
    """The tunable settings changed by `doc` (a PATCH body); the source and start cannot change."""
    if not isinstance(doc, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    for key in doc:
        if key in SOURCE_KEYS:
            raise InvalidRequest(f"{key} cannot be changed: delete the subscription and create it again",
                                 field=key)
        if key not in TUNABLE:
            raise InvalidRequest(f"unknown field {key!r}", field=key)
    changes: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "partitionBy":
            if value not in PARTITIONS:
                raise InvalidRequest("partitionBy must be \"none\" or \"stream\"", field="partitionBy")
            changes["partition_by"] = value
        else:
            changes[_ATTRIBUTES[key]] = _number(key, value)
    return replace(settings, **changes)

