"""Read queries over the storage schema that must not cost in proportion to the log.

Filtered `$all` reads go through the secondary indexes (event type, stream category), as KurrentDB 25.1's
do: their cost grows with the matches, not with the positions in between. A filter no index answers (a stream
glob, a stream prefix shorter than a category) scans at most a window of positions and answers with a cursor.
Stream listings read one name range, bounded above by the prefix.
"""
from __future__ import annotations

import bisect
import operator
import sqlite3
from dataclasses import dataclass
from itertools import accumulate
from operator import attrgetter
from typing import Callable, Iterable, Sequence

import crc32c

from ..errors import CorruptRecord
from ..replyjson import DATA_BINARY, METADATA_BINARY
from .records import Record, record_from_row
from .schema import CATEGORY_SQL, METADATA_SQL, RECORD_COLUMNS, REPLY_COLUMNS
from .statements import STREAM_COLUMNS

MAX_INDEX_SOURCES = 64  # distinct types of a typePrefix read through the index; past this, a windowed scan
MAX_REPLY_BYTES = 16 * 1024 * 1024  # a page stops before its payloads (as returned) pass this; `next` goes on
_RECORD_OVERHEAD = 200  # bytes of a returned event besides its payloads (id, stream, type, times, keys)


# An event of a page read as the reply's JSON is the row of REPLY_COLUMNS itself, (position, json,
# json_crc), as sqlite3 returns it: no object is made per event (wrapping each row cost ~0.19 µs, a tenth of a
# read). These read its parts.
RenderedEvent = tuple  # (position, json, json_crc)
rendered_position = operator.itemgetter(0)
rendered_json = operator.itemgetter(1)


def rendered_version(event: RenderedEvent) -> int:
    """The event's stream version, read from its text's tail (paging needs it of a page's last event only)."""
    text = event[1]
    tail = text.rindex(b',"position":', 0, text.rindex(b',"created":"'))
    return int(text[text.rindex(b',"version":', 0, tail) + 11:tail])


def rendered_size(event: RenderedEvent) -> int:
    return len(event[1])


_CHUNK = 256  # rows fetched at a time: a page stops at its byte budget without fetching much past it


def render_rows(rows, limit: int, max_bytes: int) -> tuple[list[RenderedEvent], bool]:
    """Rows of REPLY_COLUMNS (a cursor: fetched only as far as needed), each text verified against its
    CRC32C (CorruptRecord otherwise), up to `limit` events or `max_bytes` of reply (at least one); True when it
    stopped there, so more may follow. Chunks of rows are checked and measured with C-level maps, not a Python
    loop per event: this is the read path."""
    out: list[RenderedEvent] = []
    size = 0
    while len(out) < limit:
        chunk = rows.fetchmany(min(_CHUNK, limit - len(out)))
        if not chunk:
            return out, False
        texts = [row[1] for row in chunk]
        if list(map(crc32c.crc32c, texts)) != [row[2] for row in chunk]:
            raise CorruptRecord(next(row[0] for row in chunk if crc32c.crc32c(row[1]) != row[2]))
        sizes = list(accumulate(map(len, texts), initial=size))
        if sizes[-1] > max_bytes:  # sizes[k]: the page's bytes with the chunk's first k rows
            fits = bisect.bisect_right(sizes, max_bytes) - 1
            out += chunk[:fits if out or fits else 1]
            return out, True
        size = sizes[-1]
        out += chunk
    return out, True



def reply_size(record: Record) -> int:
    """About how many bytes the record takes in a reply (binary payloads grow by a third in base64)."""
    data, metadata = len(record.data), len(record.metadata)
    if record.flags & DATA_BINARY:
        data = data * 4 // 3
    if record.flags & METADATA_BINARY:
        metadata = metadata * 4 // 3
    return data + metadata + len(record.stream) + len(record.type) + _RECORD_OVERHEAD


def verified_records(rows: Iterable[Sequence], limit: int, max_bytes: int = MAX_REPLY_BYTES
                     ) -> tuple[list[Record], bool]:
    """Verified records from `rows` (a cursor: read only as far as needed) up to `limit` of them or
    `max_bytes` in a reply (at least one); True when it stopped there, so more may follow."""
    records: list[Record] = []
    size = 0
    for row in rows:
        record = record_from_row(row).verified()
        size += reply_size(record)
        if records and size > max_bytes:
            return records, True
        records.append(record)
        if len(records) == limit:
            return records, True
    return records, False


Page = list[Record] | list[RenderedEvent]


@dataclass(frozen=True, slots=True)
class Take:
    """What a read selects (`columns`) and what turns a cursor of those rows into a page:
    (rows, limit, max_bytes) -> (page, stopped early); and what paging reads of one item of such a page."""
    columns: str
    pages: Callable[[Iterable[Sequence], int, int], tuple[Page, bool]]
    position: Callable[[Record | RenderedEvent], int]
    version: Callable[[Record | RenderedEvent], int]
    size: Callable[[Record | RenderedEvent], int]  # its bytes in a reply
    total_size: Callable[[Page], int]  # a page's

    def within_bytes(self, items: Page, max_bytes: int = MAX_REPLY_BYTES) -> tuple[Page, bool]:
        """The longest prefix of `items` within `max_bytes` of reply (at least one item); True when cut."""
        size = 0
        for i, item in enumerate(items):
            size += self.size(item)
            if i and size > max_bytes:
                return items[:i], True
        return items, False


RECORDS = Take(RECORD_COLUMNS, verified_records, attrgetter("position"), attrgetter("version"), reply_size,
               lambda records: sum(map(reply_size, records)))
REPLY_TEXTS = Take(REPLY_COLUMNS, render_rows, rendered_position, rendered_version, rendered_size,
                   lambda events: sum(map(len, map(rendered_json, events))))


def page_taker(*, rendered: bool) -> Take:
    """Records for the node's own use, or events as the reply's stored JSON (both verified)."""
    return REPLY_TEXTS if rendered else RECORDS


@dataclass(slots=True)
class AllFilter:
    types: Sequence[str] = ()
    type_prefix: str | None = None
    stream_prefix: str | None = None
    stream_pattern: str | None = None
    include_system: bool = True  # False leaves out `$`-streams (the API's default); positions keep their gaps

    @property
    def active(self) -> bool:
        return bool(self.types or self.type_prefix or self.stream_prefix or self.stream_pattern
                    or not self.include_system)

    def key(self) -> tuple:
        """The filter as a hashable value."""
        return tuple(self.types), self.type_prefix, self.stream_prefix, self.stream_pattern, self.include_system

    def sql(self) -> tuple[str, list]:
        """Every filter as SQL (for the windowed scan)."""
        return _clauses(self.types, self.type_prefix, self.stream_prefix, self.stream_pattern,
                        no_system=not self.include_system)

    @property
    def system_clause_needed(self) -> bool:
        """Whether `$`-streams must be filtered out explicitly (a stream prefix without `$` already does)."""
        return not self.include_system and not (self.stream_prefix and not self.stream_prefix.startswith("$"))


def _clauses(types: Sequence[str] = (), type_prefix: str | None = None, stream_prefix: str | None = None,
             stream_pattern: str | None = None, *, no_system: bool = False) -> tuple[str, list]:
    clauses, args = [], []
    if types:
        clauses.append(f"type IN ({','.join('?' * len(types))})")
        args.extend(types)
    if type_prefix:
        clauses.append("substr(type, 1, ?) = ?")
        args.extend([len(type_prefix), type_prefix])
    if stream_prefix:
        clauses.append("substr(stream, 1, ?) = ?")
        args.extend([len(stream_prefix), stream_prefix])
    if stream_pattern:
        clauses.append("stream GLOB ?")
        args.append(stream_pattern)
    if no_system:
        clauses.append("substr(stream, 1, 1) <> '$'")
    return "".join(" AND " + c for c in clauses), args


def prefix_upper(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (None: no such string), in SQLite's
    BINARY order of UTF-8, which is code point order."""
    chars = list(prefix)
    while chars:
        point = ord(chars[-1]) + 1
        if 0xD800 <= point <= 0xDFFF:  # surrogates are never in a stored (valid UTF-8) name
            point = 0xE000
        if point <= 0x10FFFF:
            chars[-1] = chr(point)
            return "".join(chars)
        chars.pop()
    return None


@dataclass(frozen=True, slots=True)
class _Source:
    """One run of an index: the positions of the events whose `column` equals `key`, in order."""
    index: str
    column: str
    key: str


def _category_of(stream_prefix: str) -> str | None:
    dash = stream_prefix.find("-")
    return stream_prefix[:dash + 1] if dash >= 0 else None


def _types_with_prefix(conn: sqlite3.Connection, prefix: str) -> list[str] | None:
    """The distinct types starting with `prefix`, by skipping through the type index (one seek each); None
    when there are more than MAX_INDEX_SOURCES."""
    upper = prefix_upper(prefix)
    bound, args = ("AND type < ?", [upper]) if upper is not None else ("", [])
    found: list[str] = []
    row = conn.execute(f"SELECT min(type) FROM events WHERE type >= ? {bound}", (prefix, *args)).fetchone()
    while row is not None and row[0] is not None:
        if len(found) == MAX_INDEX_SOURCES:
            return None
        found.append(row[0])
        row = conn.execute(f"SELECT min(type) FROM events WHERE type > ? {bound}", (row[0], *args)).fetchone()
    return found


def _plan(conn: sqlite3.Connection, filters: AllFilter) -> tuple[list[_Source], str, list] | None:
    """Index runs whose union holds every match, with the SQL of the filters they do not cover; None when no
    index covers the filter."""
    if filters.types or filters.type_prefix:
        if filters.types:
            types = [t for t in dict.fromkeys(filters.types)
                     if not filters.type_prefix or t.startswith(filters.type_prefix)]
        else:
            types = _types_with_prefix(conn, filters.type_prefix)
        if types is not None:
            where, args = _clauses(stream_prefix=filters.stream_prefix, stream_pattern=filters.stream_pattern,
                                   no_system=filters.system_clause_needed)
            return [_Source("events_by_type", "type", t) for t in types], where, args
    category = _category_of(filters.stream_prefix) if filters.stream_prefix else None
    if category is not None:
        where, args = _clauses(filters.types, filters.type_prefix,
                               filters.stream_prefix if filters.stream_prefix != category else None,
                               filters.stream_pattern, no_system=filters.system_clause_needed)
        return [_Source("events_by_category", CATEGORY_SQL, category)], where, args
    return None


def read_all(conn: sqlite3.Connection, *, start: int | None, limit: int, backward: bool, filters: AllFilter,
             head: int, window: int, take: Take = RECORDS) -> tuple[Page, int | None]:
    """One page of `$all` up to `head` (the last position the reader may see): (records, next cursor).
    With filters, the cursor moves past every position examined, even when few matched."""
    plan = _plan(conn, filters) if filters.active else None
    if plan is None:
        return _scan(conn, start, limit, backward, filters, head, window if filters.active else None, take)
    sources, residual, residual_args = plan
    position = take.position
    budget = max(1, window // max(1, len(sources))) if residual else None
    share = MAX_REPLY_BYTES // max(1, len(sources))  # of the reply's bytes, for each index run
    rows: Page = []
    if backward:
        top = head if start is None else min(start, head)
        cut = 1  # every match in [cut, top] is known
        for source in sources:  # each run needs only what is above the runs before it have covered
            rows_s, covered = _index_run(conn, source, cut, top, True, limit, residual, residual_args, budget,
                                         share, take)
            rows += rows_s
            cut = max(cut, covered)
        rows, cut_short = take.within_bytes(sorted((r for r in rows if position(r) >= cut), key=position,
                                                   reverse=True)[:limit])
        if len(rows) == limit or cut_short:
            return rows, position(rows[-1]) - 1 if position(rows[-1]) > 1 else None
        return rows, cut - 1 if cut > 1 else None
    bottom = start or 1
    cut = head  # every match in [bottom, cut] is known
    for source in sources:  # each run needs only what is below what the runs before it have covered
        rows_s, covered = _index_run(conn, source, bottom, cut, False, limit, residual, residual_args, budget,
                                     share, take)
        rows += rows_s
        cut = min(cut, covered)
    rows, cut_short = take.within_bytes(sorted((r for r in rows if position(r) <= cut), key=position)[:limit])
    if len(rows) == limit or cut_short:
        return rows, position(rows[-1]) + 1 if position(rows[-1]) < head else None
    return rows, cut + 1 if cut < head else None


def _index_run(conn: sqlite3.Connection, source: _Source, low: int, high: int, backward: bool, limit: int,
               residual: str, residual_args: list, budget: int | None, max_bytes: int,
               take: Take = RECORDS) -> tuple[Page, int]:
    """Matches of one index run within [low, high], nearest first: (up to `limit` records, the position up to
    which every match of this run is among them). With residual filters, at most `budget` index entries are
    examined, a small window first (most pages fill in it), then the rest of the budget."""
    order = "DESC" if backward else ""
    base = (f"FROM events INDEXED BY {source.index} WHERE {source.column} = ? AND position >= ? "
            "AND position <= ?")
    page_sql = f"SELECT {take.columns} {base}{residual} ORDER BY position {order} LIMIT ?"
    if budget is None:
        found, stopped = take.pages(conn.execute(page_sql, (source.key, low, high, *residual_args, limit)), limit,
                              max_bytes)
        return found, (take.position(found[-1]) if stopped else low if backward else high)
    found: Page = []
    first = min(budget, 4 * limit)
    for window in (first, budget - first):
        if window <= 0:
            break
        edge = conn.execute(f"SELECT position {base} ORDER BY position {order} LIMIT 1 OFFSET ?",
                            (source.key, low, high, window - 1)).fetchone()
        run_low, run_high = (low, high) if edge is None else (edge[0], high) if backward else (low, edge[0])
        more, stopped = take.pages(conn.execute(page_sql, (source.key, run_low, run_high, *residual_args,
                                                     limit - len(found))),
                             limit - len(found), max(1, max_bytes - sum(map(take.size, found))))
        found += more
        if stopped:
            return found, take.position(found[-1])
        if edge is None:  # the run is exhausted within [low, high]
            return found, low if backward else high
        if backward:
            high = edge[0] - 1
        else:
            low = edge[0] + 1
        covered = edge[0]
    return found, covered


def _scan(conn: sqlite3.Connection, start: int | None, limit: int, backward: bool, filters: AllFilter, head: int,
          window: int | None, take: Take = RECORDS) -> tuple[Page, int | None]:
    """Positions in order, at most `window` of them when filtering."""
    where, args = filters.sql()
    if backward:
        top = head if start is None else min(start, head)
        bottom = max(1, top - window + 1) if window else 1
        rows = conn.execute(f"SELECT {take.columns} FROM events WHERE position <= ? AND position >= ?"
                            f"{where} ORDER BY position DESC LIMIT ?", (top, bottom, *args, limit))
        records, stopped = take.pages(rows, limit, MAX_REPLY_BYTES)
        if stopped:
            last = take.position(records[-1])
            return records, last - 1 if last > 1 else None
        return records, bottom - 1 if bottom > 1 else None
    bottom = start or 1
    top = min(bottom + window - 1, head) if window else head
    rows = conn.execute(f"SELECT {take.columns} FROM events WHERE position >= ? AND position <= ?"
                        f"{where} ORDER BY position LIMIT ?", (bottom, top, *args, limit))
    records, stopped = take.pages(rows, limit, MAX_REPLY_BYTES)
    if stopped:
        last = take.position(records[-1])
        return records, last + 1 if last < head else None
    return records, top + 1 if top < head else None


def stream_page(conn: sqlite3.Connection, stream: str, *, low: int, high: int | None, backward: bool, limit: int,
                created_after: int | None, through: int | None, take: Take = RECORDS) -> tuple[Page, bool]:
    """A page of the stream's events with versions in [low, high] (high None: no bound), created at or after
    `created_after` and at positions up to `through` (None: all), in version order (descending when `backward`),
    at most `limit` of them and MAX_REPLY_BYTES of reply; True when it stopped there, so more may follow."""
    bounds, args = ["stream = ?", "version >= ?"], [stream, low]
    if high is not None:
        bounds.append("version <= ?")
        args.append(high)
    if created_after is not None:
        bounds.append("created >= ?")
        args.append(created_after)
    if through is not None:
        bounds.append("position <= ?")
        args.append(through)
    rows = conn.execute(f"SELECT {take.columns} FROM events WHERE {' AND '.join(bounds)} "
                        f"ORDER BY version {'DESC' if backward else 'ASC'} LIMIT ?", (*args, limit))
    return take.pages(rows, limit, MAX_REPLY_BYTES)


# the version of the snapshot an event of a `$snapshot-` stream holds: its metadata is `{"version": N, ...}`
# (node/snapshots.py)
SNAPSHOT_VERSION_SQL = f"json_extract({METADATA_SQL}, '$.version')"


def snapshot_record_at_or_below(conn: sqlite3.Connection, stream: str, *, min_event_version: int, max_version: int,
                                through: int | None) -> Record | None:
    """The verified record of the snapshot with the highest version at or below `max_version` among the stream's
    events from `min_event_version` on and at positions up to `through` (None: all); the newest event of that
    version."""
    horizon, args = ("", ()) if through is None else (" AND position <= ?", (through,))
    row = conn.execute(f"SELECT {RECORD_COLUMNS} FROM events WHERE stream = ? AND version >= ?{horizon} "
                       f"AND {SNAPSHOT_VERSION_SQL} <= ? ORDER BY {SNAPSHOT_VERSION_SQL} DESC, version DESC LIMIT 1",
                       (stream, min_event_version, *args, max_version)).fetchone()
    return record_from_row(row).verified() if row is not None else None


def snapshot_window_start(conn: sqlite3.Connection, stream: str, *, min_event_version: int, keep: int) -> int | None:
    """The stream version from which the stream's events (those from `min_event_version` on) hold the newest event
    of each of the `keep` snapshot versions saved last, or None when fewer versions are there: a snapshot saved
    again at its version leaves its earlier event behind, which must not count against `keep`."""
    row = conn.execute(
        f"SELECT version FROM (SELECT version, row_number() OVER (PARTITION BY {SNAPSHOT_VERSION_SQL} "
        f"ORDER BY version DESC) AS newest FROM events WHERE stream = ? AND version >= ?) WHERE newest = 1 "
        f"ORDER BY version DESC LIMIT 1 OFFSET ?", (stream, min_event_version, keep - 1)).fetchone()
    return row[0] if row is not None else None


def snapshot_records_between(conn: sqlite3.Connection, stream: str, *, min_event_version: int, min_version: int,
                             max_version: int, backward: bool, limit: int, through: int | None) -> list[Record]:
    """The verified records of the snapshots with versions from `min_version` to `max_version` (the newest event
    of each version), in version order, at most `limit`."""
    horizon, args = ("", ()) if through is None else (" AND position <= ?", (through,))
    rows = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM (SELECT *, {SNAPSHOT_VERSION_SQL} AS snapshot_version, "
        f"row_number() OVER (PARTITION BY {SNAPSHOT_VERSION_SQL} ORDER BY version DESC) AS newest FROM events "
        f"WHERE stream = ? AND version >= ?{horizon} AND {SNAPSHOT_VERSION_SQL} BETWEEN ? AND ?) WHERE newest = 1 "
        f"ORDER BY snapshot_version {'DESC' if backward else 'ASC'} LIMIT ?",
        (stream, min_event_version, *args, min_version, max_version, limit))
    return [record_from_row(row).verified() for row in rows]


def stream_name_ranges(prefix: str | None) -> list[tuple[str, str | None]]:
    """[low, high) name ranges a listing reads: the prefix's range, or, without a `$` prefix, every name but
    the system streams (which sort between '#' and '%', so skipping them is a range, not a filter)."""
    if prefix:
        return [(prefix, prefix_upper(prefix))]
    return [("", "$"), ("%", None)]


def stream_rows(conn: sqlite3.Connection, after: str, *, inclusive: bool, below: str | None, limit: int,
                hide_deleted: bool) -> list[tuple]:
    """Stream rows with names from `after` (itself too when `inclusive`) up to `below`, in name order."""
    sql = (f"SELECT {STREAM_COLUMNS} FROM streams WHERE stream {'>=' if inclusive else '>'} ? AND version > 0"
           + (" AND deleted = 'no'" if hide_deleted else ""))
    args: list = [after]
    if below is not None:
        sql += " AND stream < ?"
        args.append(below)
    return conn.execute(sql + " ORDER BY stream LIMIT ?", (*args, limit)).fetchall()
