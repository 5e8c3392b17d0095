"""Request parsing: every limit and rule of the HTTP contract, raising InvalidRequest (400) on bad input."""
from __future__ import annotations

import asyncio
import binascii
import re
from itertools import accumulate
from typing import Any, Callable, Mapping

import msgspec
import orjson
from msgspec import UNSET, UnsetType
from multidict import MultiMapping

from ...ids import uuid7_bytes
from ..errors import InvalidRequest, ReservedStream
from ..log import ANY, NO_STREAM, STREAM_EXISTS, ExpectedVersion, NewEvent, StreamAppend
from ..storage import DATA_BINARY, METADATA_BINARY

MAX_STREAM_NAME_BYTES = 512
# the metadata stream of a stream is `$$<stream>`: two bytes longer than the longest name a client can write
MAX_SYSTEM_STREAM_NAME_BYTES = MAX_STREAM_NAME_BYTES + 2


def readable_name_bytes(name: str) -> int:
    """The longest a stream name to read may be: a metadata stream's, whatever its stream's length, is longer."""
    return MAX_SYSTEM_STREAM_NAME_BYTES if name.startswith("$$") else MAX_STREAM_NAME_BYTES
MAX_TYPE_CHARS = 256
MAX_EVENTS_PER_APPEND = 10_000
MAX_READ_LIMIT = 4096
DEFAULT_READ_LIMIT = 100
MAX_LIST_LIMIT = 1000
MAX_INT = 2**62
MAX_JSON_DEPTH = 128  # nesting of arrays and objects in data, metadata and stream metadata
EXPECTED_WORDS = (ANY, NO_STREAM, STREAM_EXISTS)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The canonical 8-4-4-4-12 hex form only: uuid.UUID alone would also take braces, "urn:uuid:" and no hyphens,
# which the OpenAPI document (format uuid) does not allow.
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def stream_name(raw: str, *, writing: bool = False, field: str = "stream", what: str = "stream",
                max_bytes: int = MAX_STREAM_NAME_BYTES) -> str:
    if not writing and max_bytes == MAX_STREAM_NAME_BYTES:
        max_bytes = readable_name_bytes(raw)
    if not raw or len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidRequest(f"a {what} name is 1 to {max_bytes} bytes of UTF-8", field=field)
    if _CONTROL.search(raw):
        raise InvalidRequest(f"a {what} name may not contain control characters", field=field)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"a {what} name must be valid UTF-8", field=field) from None
    if writing and raw.startswith("$"):
        raise ReservedStream(f"stream {raw!r} is a system stream: names starting with '$' are read-only",
                             field=field)
    return raw


def parse_json_body(body: bytes) -> Any:
    if not body:
        raise InvalidRequest("the request needs a JSON body", field="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise not_taken_json("the body", exc, field="body") from None


async def refuse_body(request, hint: str = "") -> None:
    """400 for a request that takes no body but has one that says something (an empty JSON object, which
    some HTTP clients send with every POST, says nothing): ignoring it would ignore what the client meant."""
    body = await request.read()
    if body and body.strip() != b"{}":
        try:
            empty = orjson.loads(body) == {}
        except orjson.JSONDecodeError:
            empty = False
        if not empty:
            raise InvalidRequest(f"this request takes no body{hint}", field="body")


def not_taken_json(what: str, exc: orjson.JSONDecodeError, *, field: str) -> InvalidRequest:
    """The 400 for text orjson refuses. Two kinds are valid JSON (RFC 8259) that the store does not take, as
    I-JSON (RFC 7493) and PostgreSQL's jsonb do not: a number past a double's range (1e400), and a string with
    an unpaired surrogate escape (\\ud800), which no UTF-8 text can hold. Say which, not "not valid JSON"."""
    reason = str(exc)
    if "not valid UTF-8" in reason:  # orjson says "surrogates not allowed" of any invalid UTF-8 byte
        return InvalidRequest(f"{what} is not valid UTF-8 (JSON text must be)", field=field)
    if "infinity" in reason:
        return InvalidRequest(f"{what} is JSON this store does not take: a number past a double's range "
                              f"(about 1.8e308; any precision within it is kept): {exc}", field=field)
    if "surrogate" in reason:
        return InvalidRequest(f"{what} is JSON this store does not take: a string with an unpaired surrogate "
                              f"escape (UTF-8 cannot hold it): {exc}", field=field)
    if "depth limit" in reason:  # past orjson's own limit (1024 levels): the store's limit is lower still
        return InvalidRequest(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep", field=field,
                              maxDepth=MAX_JSON_DEPTH)
    return InvalidRequest(f"{what} is not valid JSON: {exc}", field=field)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(raw: bytes, *, above: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of valid JSON text, or any number <= `above` when it is at most `above` (the
    common case, answered by counting brackets)."""
    if len(raw) <= 2 * above + 1 or raw.count(b"[") + raw.count(b"{") <= above:  # each level takes two brackets
        return 0
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


_SHALLOW_BYTES = 2 * MAX_JSON_DEPTH + 1  # JSON text this short cannot nest deeper than MAX_JSON_DEPTH


def check_depth(raw: bytes, field: str, *, limit: int = MAX_JSON_DEPTH) -> None:
    if json_depth(raw, above=limit) > limit:
        raise InvalidRequest(f"{field} is nested more than {limit} levels deep", field=field, maxDepth=limit)


def require_object(value: Any, field: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object", field=field)
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r} in {field}", field=f"{field}.{unknown[0]}"
                             if field != "body" else unknown[0])
    return value


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bounded_int(value: Any, field: str, low: int, high: int = MAX_INT) -> int:
    if not is_int(value) or not low <= value <= high:
        raise InvalidRequest(f"{field} must be an integer from {low} to {high}", field=field)
    return value


def expected_version(value: Any, field: str = "expectedVersion") -> ExpectedVersion:
    if value in EXPECTED_WORDS:
        return value
    if is_int(value) and 0 <= value <= MAX_INT:
        return value
    raise InvalidRequest(f"{field} must be one of {', '.join(EXPECTED_WORDS)} or a version number >= 0",
                         field=field)


def expected_version_text(text: str) -> ExpectedVersion:
    if text in EXPECTED_WORDS:
        return text
    if text.isascii() and text.isdigit() and len(text) < 20:
        return expected_version(int(text))
    return expected_version(text)


def event_type(value: Any, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TYPE_CHARS or _CONTROL.search(value):
        raise InvalidRequest(f"{field} must be a string of 1 to {MAX_TYPE_CHARS} characters without control "
                             "characters", field=field)
    return value


class _EventBody(msgspec.Struct, forbid_unknown_fields=True):
    """One event of an append as sent: data and metadata stay the client's exact JSON text (msgspec.Raw)."""
    type: Any = UNSET
    id: Any = UNSET
    data: msgspec.Raw | UnsetType = UNSET
    metadata: msgspec.Raw | UnsetType = UNSET
    dataBase64: Any = UNSET
    metadataBase64: Any = UNSET


class _AppendBody(msgspec.Struct, forbid_unknown_fields=True):
    expectedVersion: Any = ANY
    events: list[_EventBody] | UnsetType = UNSET


_APPEND_DECODER = msgspec.json.Decoder(_AppendBody)
_NULL = b"null"
_EMPTY_OBJECT = b"{}"
_AT_PATH = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.S)
_UNKNOWN_FIELD = re.compile(r"unknown field `(.*)`")


def _decode_error(exc: msgspec.ValidationError, *, at: str = "") -> InvalidRequest:
    """A 400 naming the field msgspec's error points at (`$.events[1]` with unknown field `x`: events[1].x);
    `at` is where the decoded document sits in the body."""
    message, path = _AT_PATH.match(str(exc)).groups()
    field = at + (path or "") if at else (path or "").lstrip(".")
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        field = f"{field}.{unknown.group(1)}" if field else unknown.group(1)
        message = f"unknown field {unknown.group(1)!r}"
    field = field or "body"
    return InvalidRequest(f"{field}: {message}", field=field)


def append_body(body: bytes) -> tuple[ExpectedVersion, list[NewEvent]]:
    parse_json_body(body)  # validates what msgspec only skips in data: UTF-8, number ranges, nesting
    try:
        doc = _APPEND_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise _decode_error(exc) from None
    except RecursionError:
        raise _too_deep("body") from None
    expected, events = expected_version(doc.expectedVersion), _event_list(doc.events)
    texts = [event.id for event in events if event.id is not UNSET]
    given = event_uuids(texts) if texts else []
    if given is None or len(set(given)) < len(given):  # the checks one by one name the first failing event
        seen: set[bytes] = set()
        fresh_ids = uuid7_bytes(len(events))
        return expected, [_new_event(i, event, fresh_ids[i], seen) for i, event in enumerate(events)]
    if len(given) == len(events):  # client-made ids: the ids, their texts and each event's own checks
        lowered = "".join(texts).lower().encode()  # ASCII: event_uuids took every character as hex or hyphen
        return expected, [_event(i, event, event_id, lowered[36 * i:36 * i + 36], "")
                          for i, (event, event_id) in enumerate(zip(events, given))]
    fresh, ids = iter(uuid7_bytes(len(events) - len(given))), iter(given)
    return expected, [_event(i, event, next(ids), event.id.lower().encode(), "") if event.id is not UNSET
                      else _event(i, event, next(fresh), b"", "") for i, event in enumerate(events)]


class _RawAppendBody(msgspec.Struct, forbid_unknown_fields=True):
    expectedVersion: Any = ANY
    events: list[msgspec.Raw] | UnsetType = UNSET


_RAW_APPEND_DECODER = msgspec.json.Decoder(_RawAppendBody)
_EVENT_DECODER = msgspec.json.Decoder(_EventBody)
SLICE_BYTES = 512 * 1024  # a large body is parsed in slices of about this much, letting other requests run


async def append_body_in_slices(body: bytes) -> tuple[ExpectedVersion, list[NewEvent]]:
    """append_body for any body: a large one is checked event by event, yielding to the event loop after
    each slice of SLICE_BYTES, so that a 16 MiB or 10,000-event append does not hold up other clients."""
    if len(body) <= SLICE_BYTES:
        return append_body(body)
    try:
        doc = _RAW_APPEND_DECODER.decode(body)  # the outline only: each event stays unparsed bytes
    except msgspec.ValidationError as exc:
        raise _decode_error(exc) from None
    except (msgspec.DecodeError, RecursionError):
        return append_body(body)  # raises the precise error of the whole body
    expected, events = expected_version(doc.expectedVersion), _event_list(doc.events)
    await asyncio.sleep(0)
    return expected, await _events_in_slices(events, set(), "")


async def _events_in_slices(events: list[msgspec.Raw], seen: set[bytes], at: str) -> list[NewEvent]:
    """Parse raw events (at `at` in the body), yielding to the event loop after each SLICE_BYTES."""
    fresh_ids = uuid7_bytes(len(events))
    parsed, since_yield = [], 0
    for i, raw in enumerate(events):
        text = bytes(raw)
        field = f"{at}events[{i}]"
        try:
            orjson.loads(text)
            if len(text) > SLICE_BYTES:  # one large event: each pass over it is a slice of its own
                await asyncio.sleep(0)
            event = _EVENT_DECODER.decode(text)
        except orjson.JSONDecodeError as exc:
            raise not_taken_json(field, exc, field=field) from None
        except msgspec.ValidationError as exc:
            raise _decode_error(exc, at=field) from None
        except RecursionError:
            raise _too_deep(field) from None
        parsed.append(_new_event(i, event, fresh_ids[i], seen, at=at))
        since_yield += len(text)
        if since_yield >= SLICE_BYTES:
            since_yield = 0
            await asyncio.sleep(0)
    return parsed


MAX_APPEND_ENTRIES = 1000


class _RawStreamAppend(msgspec.Struct, forbid_unknown_fields=True):
    stream: Any = UNSET
    expectedVersion: Any = ANY
    events: list[msgspec.Raw] | UnsetType = UNSET


class _MultiAppendBody(msgspec.Struct, forbid_unknown_fields=True):
    appends: list[_RawStreamAppend] | UnsetType = UNSET


_MULTI_APPEND_DECODER = msgspec.json.Decoder(_MultiAppendBody)


async def multi_append_body(body: bytes) -> list[StreamAppend]:
    """`{"appends": [{"stream", "expectedVersion", "events"}, ...]}`: 1 to MAX_APPEND_ENTRIES entries, each a
    stream clients may write with 1 or more events; 1 to MAX_EVENTS_PER_APPEND events in all, their ids unique
    across the request."""
    if not body:
        raise InvalidRequest("the request needs a JSON body", field="body")
    try:
        doc = _MULTI_APPEND_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise _decode_error(exc) from None
    except msgspec.DecodeError:
        parse_json_body(body)  # raises the precise error
        raise InvalidRequest("the body is not valid JSON", field="body") from None
    except RecursionError:
        raise _too_deep("body") from None
    entries = doc.appends
    if entries is UNSET or not 1 <= len(entries) <= MAX_APPEND_ENTRIES:
        raise InvalidRequest(f"appends must be a list of 1 to {MAX_APPEND_ENTRIES} entries", field="appends")
    total = 0
    for i, entry in enumerate(entries):
        if entry.events is UNSET or not entry.events:
            raise InvalidRequest(f"appends[{i}].events must be a list of 1 or more events",
                                 field=f"appends[{i}].events")
        total += len(entry.events)
    if total > MAX_EVENTS_PER_APPEND:
        raise InvalidRequest(f"an append to several streams takes at most {MAX_EVENTS_PER_APPEND} events in all, "
                             f"not {total}", field="appends", maxEvents=MAX_EVENTS_PER_APPEND)
    parsed: list[StreamAppend] = []
    seen: set[bytes] = set()
    for i, entry in enumerate(entries):
        at = f"appends[{i}]."
        if not isinstance(entry.stream, str):
            raise InvalidRequest(f"{at}stream must be a stream name", field=f"{at}stream")
        stream = stream_name(entry.stream, writing=True, field=f"{at}stream")
        expected = expected_version(entry.expectedVersion, f"{at}expectedVersion")
        parsed.append(StreamAppend(stream, expected, await _events_in_slices(entry.events, seen, at)))
    return parsed


def _too_deep(field: str) -> InvalidRequest:
    return InvalidRequest(f"{field} is nested more than {MAX_JSON_DEPTH} levels deep", field=field,
                          maxDepth=MAX_JSON_DEPTH)


def _event_list(events: list | UnsetType) -> list:
    if events is UNSET or not 1 <= len(events) <= MAX_EVENTS_PER_APPEND:
        raise InvalidRequest(f"events must be a list of 1 to {MAX_EVENTS_PER_APPEND} events", field="events")
    return events


def _new_event(i: int, event: _EventBody, fresh_id: bytes, seen: set[bytes], *, at: str = "") -> NewEvent:
    """The checks of one event of an append (the i-th, at `at` in the body) and what the log stores of it."""
    given_id = event.id is not UNSET
    if given_id:  # ids the node makes cannot repeat
        where = f"{at}events[{i}]."
        event_id = event_uuid(event.id, f"{where}id")
        if event_id in seen:
            raise InvalidRequest(f"{where}id repeats an id of the same request", field=f"{where}id")
        seen.add(event_id)
        id_text = event.id.lower().encode()  # the client's text, checked by event_uuid: 36 ASCII characters
    else:
        event_id, id_text = fresh_id, b""  # the log makes the texts of node-made ids, a body's together
    return _event(i, event, event_id, id_text, at)


def _event(i: int, event: _EventBody, event_id: bytes, id_text: bytes, at: str) -> NewEvent:
    """What the log stores of the i-th event at `at`, its id checked: a client's (with its text) or a fresh one
    (no text: the log makes the texts of node-made ids, a body's together)."""
    event_type_value, data, metadata, flags = _payloads(event, at, i)
    return NewEvent(event_id, event_type_value, data, metadata, bool(id_text), flags, id_text)  # positional: faster


def _payloads(body: _EventBody | _SnapshotBody, at: str = "",
              i: int | None = None) -> tuple[str, bytes, bytes, int]:
    """type, data, metadata and content flags of an event (the i-th of the events at `at` in the body) or of a
    snapshot (i None), with the checks of each. Field names for errors are made only when one is raised: this
    runs for every event of an append."""
    event_type_value = body.type
    if not (isinstance(event_type_value, str) and 0 < len(event_type_value) <= MAX_TYPE_CHARS
            and (event_type_value.isprintable() or not _CONTROL.search(event_type_value))):
        event_type(event_type_value, f"{_field_prefix(at, i)}type")  # raises with the precise message
    flags = 0
    if body.dataBase64 is not UNSET:
        where = _field_prefix(at, i)
        if body.data is not UNSET:
            raise InvalidRequest(f"{where.rstrip('.') or 'the body'} has both data and dataBase64",
                                 field=f"{where}dataBase64")
        data = base64_payload(body.dataBase64, f"{where}dataBase64")
        flags |= DATA_BINARY
    elif body.data is UNSET:
        data = _NULL
    else:
        data = bytes(body.data)
        if len(data) > _SHALLOW_BYTES and data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH:  # as json_depth
            check_depth(data, f"{_field_prefix(at, i)}data")
    if body.metadataBase64 is not UNSET:
        where = _field_prefix(at, i)
        if body.metadata is not UNSET:
            raise InvalidRequest(f"{where.rstrip('.') or 'the body'} has both metadata and metadataBase64",
                                 field=f"{where}metadataBase64")
        metadata = base64_payload(body.metadataBase64, f"{where}metadataBase64")
        flags |= METADATA_BINARY
    elif body.metadata is UNSET:
        metadata = _EMPTY_OBJECT
    else:
        metadata = bytes(body.metadata)
        if metadata[:1] != b"{":
            where = _field_prefix(at, i)
            raise InvalidRequest(f"{where}metadata must be a JSON object", field=f"{where}metadata")
        if len(metadata) > _SHALLOW_BYTES and metadata.count(b"[") + metadata.count(b"{") > MAX_JSON_DEPTH:
            check_depth(metadata, f"{_field_prefix(at, i)}metadata")
    return event_type_value, data, metadata, flags


def _field_prefix(at: str, i: int | None) -> str:
    """Where an event's fields sit in the body ("events[3]." in `at`), or "" for a snapshot's."""
    return "" if i is None else f"{at}events[{i}]."


# snapshots ---------------------------------------------------------------------------------------
SNAPSHOT_STREAM_PREFIX_BYTES = len("$snapshot-")
MAX_SOURCE_BYTES = MAX_STREAM_NAME_BYTES - SNAPSHOT_STREAM_PREFIX_BYTES


def snapshot_source(raw: str) -> str:
    return stream_name(raw, field="source", what="snapshot source", max_bytes=MAX_SOURCE_BYTES)


class _SnapshotBody(msgspec.Struct, forbid_unknown_fields=True):
    version: Any = UNSET
    type: Any = UNSET
    data: msgspec.Raw | UnsetType = UNSET
    metadata: msgspec.Raw | UnsetType = UNSET
    dataBase64: Any = UNSET
    metadataBase64: Any = UNSET
    keep: Any = UNSET


_SNAPSHOT_DECODER = msgspec.json.Decoder(_SnapshotBody)


def snapshot_body(body: bytes) -> tuple[int, NewEvent, int | None]:
    """`{"version", "type", "data" | "dataBase64", "metadata" | "metadataBase64", "keep"}`: the snapshot's version,
    the snapshot (as an event: type, data, metadata, content flags) and the retention to set (None: unchanged)."""
    parse_json_body(body)  # validates what msgspec only skips in data: UTF-8, number ranges, nesting
    try:
        doc = _SNAPSHOT_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise _decode_error(exc) from None
    except RecursionError:
        raise _too_deep("body") from None
    if doc.version is UNSET:
        raise InvalidRequest("a snapshot needs its version", field="version")
    version = bounded_int(doc.version, "version", 0)
    keep = None if doc.keep is UNSET else bounded_int(doc.keep, "keep", 1, MAX_INT)
    event_type_value, data, metadata, flags = _payloads(doc)
    return version, NewEvent(b"", event_type_value, data, metadata, given_id=False, flags=flags), keep


def base64_payload(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a base64 string (RFC 4648, with padding)", field=field)
    try:
        decoded = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{field} is not valid base64 (RFC 4648, with padding)", field=field) from None
    # strict_mode still takes padding past a full quantum ("YWJj===") and set pad bits ("YR=="): only the one
    # canonical text of the bytes comes back the same from a read
    if binascii.b2a_base64(decoded, newline=False) != value.encode():
        raise InvalidRequest(f"{field} is not canonical base64 (RFC 4648 section 3.5: exact padding, pad bits "
                             "zero)", field=field)
    return decoded


def event_uuid(value: Any, field: str) -> bytes:
    """The 16 bytes of a UUID in the canonical form (UUID_PATTERN). Checked by its hyphens and bytes.fromhex, which
    takes 32 hex digits and otherwise fails or gives fewer than 16 bytes (it skips whitespace): a third of the
    cost of the pattern and uuid.UUID, once per event of an append with client-made ids."""
    if isinstance(value, str) and len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-":
        try:
            raw = bytes.fromhex(value.replace("-", ""))
        except ValueError:
            raw = b""
        if len(raw) == 16:
            return raw
    raise InvalidRequest(f"{field} must be a UUID string like 0f8fad5b-d9cb-469f-a165-70867728950e", field=field)


def event_uuids(texts: list) -> list[bytes] | None:
    """The 16 bytes of each UUID text, checked as event_uuid checks one but all together (a fifth of the cost per
    id: appends with client-made ids have one per event); None when any text is not in the canonical form. Every
    text is 36 characters with hyphens at 8, 13, 18 and 23; then the texts without hyphens must be exactly 32 hex
    digits each: bytes.fromhex fails on anything else but whitespace, which it skips and so gives fewer bytes."""
    count = len(texts)
    if not all(type(text) is str and len(text) == 36 for text in texts):
        return None
    joined = "".join(texts)
    hyphens = "-" * count
    if not joined[8::36] == joined[13::36] == joined[18::36] == joined[23::36] == hyphens:
        return None
    try:
        raw = bytes.fromhex(joined.replace("-", ""))
    except ValueError:
        return None
    if len(raw) != 16 * count:
        return None
    return [raw[offset:offset + 16] for offset in range(0, 16 * count, 16)]


METADATA_KEYS = {"maxCount", "maxAge", "truncateBefore", "custom"}
# seconds: KurrentDB's maxAge is a .NET TimeSpan, whose largest value this is in whole seconds (~29,000 years); past
# it, a cut-off in microseconds before now no longer fits the log's 64-bit times
MAX_AGE_SECONDS = 922_337_203_685


def metadata_body(body: bytes) -> dict:
    doc = require_object(parse_json_body(body), "body", METADATA_KEYS)
    out: dict = {}
    for key, low, high in (("maxCount", 1, MAX_INT), ("maxAge", 1, MAX_AGE_SECONDS), ("truncateBefore", 0, MAX_INT)):
        if doc.get(key) is not None:
            out[key] = bounded_int(doc[key], key, low, high)
    if doc.get("custom") is not None:
        if not isinstance(doc["custom"], dict):
            raise InvalidRequest("custom must be a JSON object", field="custom")
        if json_depth(body, above=MAX_JSON_DEPTH + 1) > MAX_JSON_DEPTH + 1:  # the body's own level is not custom's
            raise InvalidRequest(f"custom is nested more than {MAX_JSON_DEPTH} levels deep", field="custom",
                                 maxDepth=MAX_JSON_DEPTH)
        out["custom"] = doc["custom"]
    return out


# query strings ---------------------------------------------------------------------------------
Parser = Callable[[str, str], Any]


def query_params(query: MultiMapping[str], parsers: Mapping[str, Parser], repeatable: set[str] = frozenset()
                 ) -> dict[str, Any]:
    """Parse a query string: unknown or repeated parameters and bad values are 400s."""
    out: dict[str, Any] = {}
    for name in query.keys():
        if name in out:
            continue
        if name not in parsers:
            raise InvalidRequest(f"unknown query parameter {name!r}", field=name)
        values = query.getall(name)
        if name in repeatable:
            out[name] = [parsers[name](name, v) for v in values]
        elif len(values) > 1:
            raise InvalidRequest(f"query parameter {name!r} given more than once", field=name)
        else:
            out[name] = parsers[name](name, values[0])
    return out


def int_param(low: int, high: int = MAX_INT) -> Parser:
    def parse(name: str, text: str) -> int:
        if not (text.isascii() and text.isdigit() and len(text) < 20) or not low <= int(text) <= high:
            raise InvalidRequest(f"{name} must be an integer from {low} to {high}", field=name)
        return int(text)
    return parse


def choice_param(*choices: str) -> Parser:
    def parse(name: str, text: str) -> str:
        if text not in choices:
            raise InvalidRequest(f"{name} must be one of {', '.join(choices)}", field=name)
        return text
    return parse


def text_param(max_chars: int = MAX_STREAM_NAME_BYTES) -> Parser:
    def parse(name: str, text: str) -> str:
        if not 1 <= len(text) <= max_chars or _CONTROL.search(text):
            raise InvalidRequest(f"{name} must be 1 to {max_chars} characters without control characters",
                                 field=name)
        return text
    return parse


def stream_name_param(name: str, text: str) -> str:
    """A stream name in a query (a listing's prefix and `after`): up to 512 characters, or 514 for a metadata
    stream (`$$<name>`), which a listing may give as its `next`."""
    if not 1 <= len(text) <= readable_name_bytes(text) or _CONTROL.search(text):
        raise InvalidRequest(f"{name} must be 1 to {MAX_STREAM_NAME_BYTES} characters without control characters "
                             f"(a metadata stream, $$ and a name: {MAX_SYSTEM_STREAM_NAME_BYTES})", field=name)
    return text


def bool_param(name: str, text: str) -> bool:
    if text not in ("true", "false"):
        raise InvalidRequest(f"{name} must be true or false", field=name)
    return text == "true"


def expected_param(name: str, text: str) -> ExpectedVersion:
    return expected_version_text(text) if text else expected_version(text, name)
