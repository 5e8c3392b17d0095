"""Rendering of replies for the CLI: human text (tables, lines) or JSON. Pure functions, no I/O."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from . import protocol
from .errors import ConnectionFailed, EvstoreError

DATA_WIDTH = 60


def to_json(value: Any) -> str:
    """One compact line of JSON (for --json: one reply per line, easy to pipe into jq); each number of a reply
    read with exact numbers (RawJSON) is written as the node sent it."""
    return protocol.dumps(value).decode()


def compact(value: Any, width: int = DATA_WIDTH) -> str:
    """`value` as short one-line JSON, cut with an ellipsis when longer than `width`."""
    text = to_json(value)
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain left-aligned text table; numbers are right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [any(_is_number(row[i]) for row in cells)
               and all(_is_number(row[i]) or row[i] == "-" for row in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return compact(value)
    return str(value)


def _is_number(text: str) -> bool:
    return text.lstrip("-").isdigit()


def append_result(reply: Mapping[str, Any]) -> str:
    first, last = reply.get("fromVersion"), reply.get("version")
    versions = f"version {last}" if first == last else f"versions {first}..{last}"
    return f"appended to {reply.get('stream')}: {versions}, position {reply.get('position')}"


def append_summary(stream: str, events: int, batches: int, last: Mapping[str, Any] | None) -> str:
    if last is None:
        return f"nothing to append to {stream}"
    return (f"appended {events} event{'s' if events != 1 else ''} to {stream} in {batches} "
            f"request{'s' if batches != 1 else ''}: stream version {last.get('version')}, "
            f"position {last.get('position')}")


def events_table(events: Sequence[Mapping[str, Any]], data_width: int = DATA_WIDTH) -> str:
    if not events:
        return "(no events)"
    rows = [(e.get("position"), e.get("stream"), e.get("version"), e.get("type"), e.get("created"),
             compact(e.get("data"), data_width)) for e in events]
    return table(["POSITION", "STREAM", "VERSION", "TYPE", "CREATED", "DATA"], rows)


def stream_page(page: Mapping[str, Any], *, show_next: bool = True) -> str:
    lines = [events_table(page.get("events") or [])]
    if show_next and page.get("next") is not None:
        lines.append(f"more: --from {page['next']}")
    return "\n".join(lines)


def streams_table(reply: Mapping[str, Any]) -> str:
    streams = reply.get("streams") or []
    lines = [table(["STREAM", "VERSION", "UPDATED"], [(s.get("stream"), s.get("version"), s.get("updated"))
                                                    for s in streams]) if streams else "(no streams)"]
    if reply.get("next") is not None:
        lines.append(f"more: --after {reply['next']}")
    return "\n".join(lines)


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {_cell(v)}" for k, v in pairs)


def stream_info(info: Mapping[str, Any]) -> str:
    metadata = info.get("metadata") or {}
    return key_values([("stream", info.get("stream")), ("version", info.get("version")),
                       ("created", info.get("created")), ("updated", info.get("updated")),
                       ("deleted", info.get("deleted")), ("metadata", metadata if metadata else None)])


def node_info(info: Mapping[str, Any], cluster: Mapping[str, Any]) -> str:
    leader = cluster.get("leader") or {}
    pairs: list[tuple[str, Any]] = [(k, v) for k, v in info.items() if k not in ("features",)]
    if info.get("features") is not None:
        features = info["features"]
        pairs.append(("features", ", ".join(map(str, features)) if isinstance(features, list) else features))
    pairs += [("role", cluster.get("role")), ("leader", leader.get("node") if leader else None),
              ("epoch", cluster.get("epoch")), ("committed position", cluster.get("committedPosition")),
              ("in-sync replicas", ", ".join(cluster.get("isr") or []) or None)]
    text = key_values(pairs)
    members = cluster.get("members") or []
    if members:
        rows = [(m.get("node"), m.get("role"), m.get("url"), m.get("position"), m.get("lag"),
                 "yes" if m.get("inSync") else "no") for m in members]
        text += "\n\n" + table(["NODE", "ROLE", "URL", "POSITION", "LAG", "IN SYNC"], rows)
    return text


def deleted(stream: str, hard: bool) -> str:
    return f"deleted {stream} ({'hard: the name can never be used again' if hard else 'soft'})"


def verify_result(result: Mapping[str, Any]) -> str:
    corrupt = list(result.get("corrupt") or [])
    checked = result.get("checked")
    if result.get("error"):
        return f"CORRUPT: {result['error']} ({checked} records checked, {len(corrupt)} corrupt)"
    if not corrupt:
        return f"ok: {checked} records checked, none corrupt"
    shown = ", ".join(map(str, corrupt[:20])) + (f" (+{len(corrupt) - 20} more)" if len(corrupt) > 20 else "")
    return f"CORRUPT: {len(corrupt)} of {checked} records at positions {shown}"


def error_line(error: BaseException) -> str:
    """The one line printed on stderr for a failure, e.g. `error: wrong_expected_version: ...`."""
    if isinstance(error, ConnectionFailed):
        return (f"error: cannot connect to {error.url}: is a node running? "
                f"Start one with `make run` (or `evstore serve`).")
    if isinstance(error, EvstoreError):
        return f"error: {error.code}: {error.message}"
    return f"error: {error}"


# -- subscriptions ----------------------------------------------------------------------------

EVENT_LINE_DATA_WIDTH = 100


def event_line(event: Mapping[str, Any], data_width: int = EVENT_LINE_DATA_WIDTH) -> str:
    """One delivered event on one line: `1042  order-1@3  OrderShipped  {"sku":"A-1"}`."""
    return (f"{event.get('position')}  {event.get('stream')}@{event.get('version')}  {event.get('type')}  "
            f"{compact(event.get('data'), data_width)}")


def caught_up(position: Any, follow: bool) -> str:
    return f"-- caught up at position {position}" + ("; following new events (Ctrl-C stops)" if follow else "")


def _setting(entry: Mapping[str, Any], key: str) -> Any:
    """A subscription field, whether the server lists it at the top or under `settings` / `stats`."""
    for source in (entry, entry.get("settings") or {}, entry.get("stats") or {}):
        if isinstance(source, Mapping) and key in source:
            return source[key]
    return None


def subscription_source(entry: Mapping[str, Any]) -> str:
    stream = _setting(entry, "stream")
    if stream is not None:
        return f"stream {stream}"
    selected = _setting(entry, "filter") or {}
    return "all" if not selected else " ".join(f"{k}={compact(v)}" for k, v in selected.items())


def subscription_entries(reply: Any) -> list[Mapping[str, Any]]:
    entries = reply.get("subscriptions") if isinstance(reply, Mapping) else reply
    return [e for e in entries or [] if isinstance(e, Mapping)]


def subscriptions_table(reply: Any) -> str:
    entries = subscription_entries(reply)
    if not entries:
        return "(no subscriptions)"
    rows = [(_setting(e, "name"), subscription_source(e), _setting(e, "checkpoint"), _setting(e, "head"),
             _setting(e, "lag"), _setting(e, "inFlight"), _setting(e, "parked"), _consumer_count(e))
            for e in entries]
    return table(["NAME", "SOURCE", "CHECKPOINT", "HEAD", "LAG", "IN FLIGHT", "PARKED", "CONSUMERS"], rows)


def _consumer_count(entry: Mapping[str, Any]) -> Any:
    consumers = _setting(entry, "consumers")
    return len(consumers) if isinstance(consumers, list) else consumers


SUBSCRIPTION_FIELDS = ("name", "stream", "filter", "startFrom", "bufferSize", "ackTimeout", "maxRetries",
                       "concurrencyLimit", "partitionBy", "checkpoint", "head", "lag", "inFlight", "parked",
                       "consumers")


def subscription_info(entry: Mapping[str, Any]) -> str:
    pairs = [(k, _setting(entry, k)) for k in SUBSCRIPTION_FIELDS if _setting(entry, k) is not None]
    known = set(SUBSCRIPTION_FIELDS) | {"settings", "stats"}
    pairs += [(k, v) for k, v in entry.items() if k not in known]
    consumers = _setting(entry, "consumers")
    if isinstance(consumers, list):
        pairs = [(k, len(v) if k == "consumers" else v) for k, v in pairs]
    return key_values(pairs)


def parked_events(reply: Any) -> str:
    entries = reply.get("events") if isinstance(reply, Mapping) else reply
    events = [e.get("event", e) for e in entries or [] if isinstance(e, Mapping)]
    return events_table(events) if events else "(no parked events)"


def subscription_created(name: str, reply: Any) -> str:
    entry = reply if isinstance(reply, Mapping) else {}
    start = _setting(entry, "startFrom")
    return f"subscription {name}: ready ({subscription_source(entry)}" + (f", from {start})" if start is not None
                                                                        else ")")


def subscription_updated(name: str, changes: Mapping[str, Any]) -> str:
    return f"subscription {name}: updated (" + ", ".join(f"{k} {_cell(v)}" for k, v in changes.items()) + ")"


def subscription_done(name: str, action: str, reply: Any) -> str:
    details = ", ".join(f"{k} {_cell(v)}" for k, v in reply.items()) if isinstance(reply, Mapping) and reply else ""
    return f"subscription {name}: {action}" + (f" ({details})" if details else "")
