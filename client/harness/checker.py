"""Consistency checker for the nodes of one store, shared by the fault tests and `evstore check`.

It reads every node's whole `$all` and every stream, then proves: positions 1..head gap-free and
identical on all nodes; each stream's versions gap-free and equal to its events in `$all`; every event
id once. Given the `History` of a workload's appends it also proves: every acknowledged append present
exactly once where its reply said; every append with an unknown outcome all-or-nothing; no failed append
visible; no event nobody appended.

With timings (`Attempt.started`/`answered`, and the reads a workload recorded with `History.record_read`) it
also proves that answers told the truth: a 409 names a version that was committed (it is in the final log,
was not the version the append expected, and was not written only after the 409 was sent, nor already
overtaken by an acknowledged append before it was asked); a `consistency=leader` read shows every append
acknowledged before it began; one client's reads through one node (of one consistency) never go backwards.

Reading (`read_node`, `check_cluster`) is separate from judging (`analyse`): the judging functions take
already-read data, so they are testable without a server.

Assumes no scavenge has run: scavenge removes events from `$all`, which would read as gaps.
"""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal, NamedTuple

import aiohttp

from ..async_client import AsyncEvstoreClient
from ..errors import ConnectionFailed, EvstoreError, StreamDeleted, StreamNotFound

PAGE = 4096
STREAM_LIST_PAGE = 1000
READ_CONCURRENCY = 16
MAX_PROBLEMS = 50
MAX_PER_KIND = 10
POLL_INTERVAL = 0.1

Status = Literal["ok", "failed", "unknown"]


# -- history of a workload --------------------------------------------------------------------

@dataclass(eq=False)
class Attempt:
    """One logical append (all retries of the same event ids are the same attempt).

    status "ok": acknowledged with `reply`; "failed": a definite rejection that wrote nothing (a 4xx);
    "unknown": no definite answer (503, timeout, lost connection), so it may or may not have been written.
    """
    stream: str
    event_ids: list[str]
    expected_version: int | str
    status: Status = "unknown"
    reply: dict | None = None
    started: float = field(default_factory=time.monotonic)  # when its first request was sent
    answered: float | None = None  # when the definite answer came

    def succeeded(self, reply: dict) -> None:
        self.status, self.reply, self.answered = "ok", reply, time.monotonic()

    def rejected(self, reply: dict | None = None) -> None:
        self.status, self.reply, self.answered = "failed", reply, time.monotonic()


@dataclass(eq=False)
class Read:
    """One read of a stream's version by one client through one node (`version` None until it answered)."""
    client: str
    node: str
    stream: str
    consistency: str | None = None  # "leader" for a linearizable read
    started: float = field(default_factory=time.monotonic)
    answered: float | None = None
    version: int | None = None

    def returned(self, version: int) -> None:
        self.version, self.answered = version, time.monotonic()


class History:
    """The append attempts of a run, in the order they began."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.groups: list[list[Attempt]] = []  # the attempts of each append to several streams
        self.reads: list[Read] = []

    def record_many(self, entries: Iterable[tuple[str, Iterable[str], int | str]]) -> list[Attempt]:
        """One append to several streams (POST /v1/streams): an attempt per (stream, event ids, expected
        version) entry, set to the same outcome by the caller, and judged together: all present or none, at
        contiguous positions."""
        group = [self.record(stream, event_ids, expected) for stream, event_ids, expected in entries]
        self.groups.append(group)
        return group

    def record_read(self, client: str, node: str, stream: str, consistency: str | None = None) -> Read:
        read = Read(client, node, stream, consistency)
        self.reads.append(read)
        return read

    def record(self, stream: str, event_ids: Iterable[str], expected_version: int | str,
               status: Status = "unknown", reply: dict | None = None) -> Attempt:
        attempt = Attempt(stream, [str(i).lower() for i in event_ids], expected_version, status, reply)
        self.attempts.append(attempt)
        return attempt

    def __iter__(self):
        return iter(self.attempts)

    def __len__(self) -> int:
        return len(self.attempts)

    def count(self, status: Status) -> int:
        return sum(1 for a in self.attempts if a.status == status)


# -- what was read from a node ----------------------------------------------------------------

class Ev(NamedTuple):
    """An event as compared between nodes and reads (`created` is not compared)."""
    position: int
    id: str
    stream: str
    version: int
    type: str
    data: Any
    metadata: Any


def to_ev(raw: dict) -> Ev:
    return Ev(raw["position"], raw["id"], sys.intern(raw["stream"]), raw["version"], sys.intern(raw["type"]),
              raw.get("data"), raw.get("metadata"))


class StreamView(NamedTuple):
    """A stream as its own read returned it: status "ok", "not_found" (404) or "deleted" (410)."""
    version: int
    events: list[Ev]
    status: str = "ok"


@dataclass
class NodeData:
    url: str
    head: int = 0
    events: list[Ev] = field(default_factory=list)  # the whole $all, in order
    listed: dict[str, int] = field(default_factory=dict)  # GET /v1/streams: name -> version
    streams: dict[str, StreamView] = field(default_factory=dict)  # each listed stream's own read
    error: str | None = None


# -- the verdict ------------------------------------------------------------------------------

class Problems:
    """Human sentences, capped per kind and overall so one broken invariant cannot hide the others."""

    def __init__(self, cap: int = MAX_PROBLEMS, per_kind: int = MAX_PER_KIND) -> None:
        self.cap, self.per_kind = cap, per_kind
        self.shown: list[str] = []
        self.by_kind: dict[str, int] = {}
        self.total = 0

    def add(self, kind: str, text: str) -> None:
        self.total += 1
        seen = self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if seen <= self.per_kind and len(self.shown) < self.cap:
            self.shown.append(text)

    def sentences(self) -> list[str]:
        hidden = self.total - len(self.shown)
        return self.shown + ([f"... and {hidden} more problem{'s' if hidden != 1 else ''}"] if hidden else [])


@dataclass
class Report:
    ok: bool
    problems: list[str]
    problems_total: int = 0
    nodes: int = 0
    events: int = 0
    streams: int = 0
    acknowledged: int = 0
    unknown_present: int = 0
    unknown_absent: int = 0
    failed: int = 0
    heads: dict[str, int | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "problems": self.problems, "problemsTotal": self.problems_total,
                "nodes": self.nodes, "events": self.events, "streams": self.streams,
                "acknowledged": self.acknowledged, "unknownPresent": self.unknown_present,
                "unknownAbsent": self.unknown_absent, "failed": self.failed, "heads": self.heads}

    def summary(self) -> str:
        verdict = "ok" if self.ok else f"FAILED: {self.problems_total} problem{'s' if self.problems_total != 1 else ''}"
        line = (f"{verdict}: {self.nodes} node{'s' if self.nodes != 1 else ''}, {self.events} events, "
                f"{self.streams} streams")
        if self.acknowledged or self.unknown_present or self.unknown_absent or self.failed:
            line += (f"; {self.acknowledged} acknowledged appends, unknown outcome: {self.unknown_present} "
                     f"present, {self.unknown_absent} absent; {self.failed} failed")
        return "\n".join([line, *(f"  - {p}" for p in self.problems)])


# -- judging already-read data (pure) ---------------------------------------------------------

@dataclass
class LogIndex:
    """Lookups over one node's $all."""
    position_of: dict[str, int]  # event id -> position of its first occurrence
    by_stream: dict[str, list[Ev]]  # stream -> its events in $all order

    @classmethod
    def build(cls, events: list[Ev]) -> "LogIndex":
        position_of: dict[str, int] = {}
        by_stream: dict[str, list[Ev]] = {}
        for e in events:
            position_of.setdefault(e.id, e.position)
            by_stream.setdefault(e.stream, []).append(e)
        return cls(position_of, by_stream)


def metadata_stream(stream: str) -> str:
    return "$$" + stream


def short(ids: list[str]) -> str:
    return ids[0] if len(ids) == 1 else f"{ids[0]} (+{len(ids) - 1} more)"


def trimmed_system_events(nodes: list[NodeData]) -> tuple[list[NodeData], dict[str, int]]:
    """The nodes' logs without what any of them trimmed, and the first version kept of each trimmed stream.
    Nodes trim `$`-streams with a maxCount (subscription checkpoints, parked events, snapshots) on their own, a
    moment apart, so each node may lack a few more of their first events than another: those are dropped from
    every node's copy before the copies are compared."""
    first_kept: dict[str, int] = {}
    for node in nodes:
        seen: set[str] = set()
        for e in node.events:
            if e.stream.startswith("$") and e.stream not in seen:
                seen.add(e.stream)
                if e.version > 1:
                    first_kept[e.stream] = max(first_kept.get(e.stream, 1), e.version)
    if not first_kept:
        return nodes, first_kept
    kept = [replace(node, events=[e for e in node.events if e.version >= first_kept.get(e.stream, 0)])
            for node in nodes]
    return kept, first_kept


def check_log(node: NodeData, problems: Problems, first_kept: dict[str, int] | None = None) -> LogIndex:
    """One node's $all on its own: positions, head, unique ids, per-stream versions, stream reads. `first_kept`:
    the first version kept of each trimmed `$`-stream; the positions of their trimmed events are the only
    gaps allowed."""
    name = node.url
    first_kept = first_kept or {}
    gaps: list[str] = []
    missing_count = 0
    previous = 0
    for e in node.events:
        if e.position != previous + 1:
            if e.position > previous + 1:
                missing_count += e.position - previous - 1
                gaps.append(f"position {previous + 1}" if e.position == previous + 2
                            else f"positions {previous + 1}..{e.position - 1}")
            else:
                problems.add("gap", f"{name}: $all position {e.position} comes after {previous}")
        previous = e.position
    if missing_count != sum(version - 1 for version in first_kept.values()):
        for missing in gaps:
            problems.add("gap", f"{name}: $all has a gap: {missing} missing")
    if node.head != previous:
        problems.add("head", f"{name}: $all head is {node.head} but its last event is at position {previous}")

    index = LogIndex.build(node.events)
    if len(index.position_of) != len(node.events):
        seen: set[str] = set()
        for e in node.events:
            if e.id in seen:
                problems.add("duplicate", f"{name}: event id {e.id} occurs more than once in $all "
                                          f"(first at position {index.position_of[e.id]}, again at {e.position})")
            seen.add(e.id)

    for stream, events in index.by_stream.items():
        for expected, e in enumerate(events, start=first_kept.get(stream, 1)):
            if e.version != expected:
                problems.add("versions", f"{name}: stream {stream!r} in $all has version {e.version} at position "
                                         f"{e.position} where version {expected} belongs")
                break

    check_stream_reads(node, index, problems)
    return index


def check_stream_reads(node: NodeData, index: LogIndex, problems: Problems) -> None:
    """Listed streams and their own reads against $all."""
    name = node.url
    for stream, listed_version in node.listed.items():
        in_all = index.by_stream.get(stream, [])
        if listed_version != len(in_all):
            problems.add("stream", f"{name}: stream {stream!r} is listed at version {listed_version} but $all "
                                   f"holds {len(in_all)} of its events")
    for stream, events in index.by_stream.items():
        if not stream.startswith("$") and stream not in node.listed and metadata_stream(stream) not in index.by_stream:
            problems.add("stream", f"{name}: stream {stream!r} has {len(events)} events in $all but is not "
                                   f"listed (and was never deleted)")
    for stream, view in node.streams.items():
        in_all = index.by_stream.get(stream, [])
        if view.status != "ok":
            problems.add("stream", f"{name}: listed stream {stream!r} reads as {view.status}")
            continue
        if view.version != len(in_all):
            problems.add("stream", f"{name}: stream {stream!r} reads at version {view.version} but $all holds "
                                   f"{len(in_all)} of its events")
        has_retention = metadata_stream(stream) in index.by_stream  # metadata or a delete may hide a prefix
        first = view.events[0].version if view.events else view.version + 1
        if first != 1 and not has_retention:
            problems.add("stream", f"{name}: stream {stream!r} reads from version {first}, not 1")
        expected = in_all[first - 1:] if first >= 1 else in_all
        if view.events != expected:
            problems.add("stream", f"{name}: stream {stream!r} read differs from its events in $all "
                                   f"{first_difference(view.events, expected)}")


def first_difference(got: list[Ev], want: list[Ev]) -> str:
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return f"at its event {i + 1}: {describe(a)} vs {describe(b)}"
    return f"in length: {len(got)} vs {len(want)} events"


def describe(e: Ev | None) -> str:
    if e is None:
        return "nothing"
    return f"{e.stream}@{e.version} id {e.id} type {e.type} at position {e.position}"


def compare_nodes(reference: NodeData, other: NodeData, problems: Problems) -> bool:
    """Reports how `other` differs from `reference`; True when both hold the same log and streams."""
    same = True
    if other.head != reference.head:
        problems.add("divergence", f"$all head is {reference.head} on {reference.url} but {other.head} on {other.url}")
        same = False
    if other.events != reference.events:
        same = False
        differing = [(a, b) for a, b in zip(reference.events, other.events) if a != b]
        for a, b in differing[:3]:
            problems.add("divergence", f"nodes diverge at position {a.position}: {reference.url} has {describe(a)}, "
                                       f"{other.url} has {describe(b)}")
        if len(differing) > 3:
            problems.add("divergence", f"{reference.url} and {other.url} differ at {len(differing)} positions in all")
        shorter, longer = sorted((reference, other), key=lambda n: len(n.events))
        if len(shorter.events) != len(longer.events):
            missing = longer.events[len(shorter.events):]
            problems.add("divergence", f"{shorter.url} lacks {len(missing)} events that {longer.url} has, from "
                                       f"position {missing[0].position}")
    if other.listed != reference.listed:
        same = False
        names = sorted(set(other.listed) | set(reference.listed))
        differing_names = [n for n in names if other.listed.get(n) != reference.listed.get(n)]
        for n in differing_names[:3]:
            problems.add("divergence", f"stream {n!r} is listed at version {reference.listed.get(n)} on "
                                       f"{reference.url} but {other.listed.get(n)} on {other.url}")
    return same


def check_history(node: NodeData, index: LogIndex, history: History, problems: Problems) -> dict[str, int]:
    """The attempts of `history` against one node's log. Returns the outcome counts."""
    name = node.url
    counts = {"acknowledged": 0, "unknown_present": 0, "unknown_absent": 0, "failed": 0}
    events = node.events
    at = {e.position: e for e in events} if events and events[-1].position != len(events) else None

    def event_at(position: int) -> Ev | None:
        if at is not None:
            return at.get(position)
        return events[position - 1] if 1 <= position <= len(events) else None

    for attempt in history:
        positions = [index.position_of.get(i) for i in attempt.event_ids]
        present = sum(p is not None for p in positions)
        what = f"append of {len(attempt.event_ids)} event(s) to {attempt.stream!r} (id {short(attempt.event_ids)})"
        if attempt.status == "ok":
            counts["acknowledged"] += 1
            if present < len(positions):
                problems.add("lost", f"{name}: acknowledged {what} is lost: {len(positions) - present} of "
                                     f"{len(positions)} events missing")
                continue
            placed = placement_problem(attempt, [event_at(p) for p in positions])
            reply = attempt.reply or {}
            if placed is None and reply:
                first, last = event_at(positions[0]), event_at(positions[-1])
                if (first.version, last.version, last.position) != (reply.get("fromVersion"), reply.get("version"),
                                                                    reply.get("position")):
                    placed = (f"is at versions {first.version}..{last.version}, position {last.position}, but was "
                              f"acknowledged as versions {reply.get('fromVersion')}..{reply.get('version')}, "
                              f"position {reply.get('position')}")
            if placed is not None:
                problems.add("acknowledged", f"{name}: acknowledged {what} {placed}")
        elif attempt.status == "unknown":
            if present == 0:
                counts["unknown_absent"] += 1
            elif present < len(positions):
                problems.add("half-visible", f"{name}: {what} with unknown outcome is half-visible: {present} of "
                                             f"{len(positions)} events present")
            else:
                counts["unknown_present"] += 1
                placed = placement_problem(attempt, [event_at(p) for p in positions])
                if placed is not None:
                    problems.add("half-visible", f"{name}: {what} with unknown outcome {placed}")
        else:
            counts["failed"] += 1
            if present:
                problems.add("failed-visible", f"{name}: failed {what} is visible: {present} of "
                                               f"{len(positions)} events present")

    for group in history.groups:
        positions = [index.position_of.get(i) for attempt in group for i in attempt.event_ids]
        present = sum(p is not None for p in positions)
        what = (f"append to {len(group)} streams ({', '.join(repr(a.stream) for a in group[:3])}"
                f"{', ...' if len(group) > 3 else ''}; id {short(group[0].event_ids)})")
        if 0 < present < len(positions):
            problems.add("half-visible", f"{name}: {what} is torn: {present} of {len(positions)} events present")
        elif present and positions != list(range(positions[0], positions[0] + len(positions))):
            problems.add("half-visible", f"{name}: {what} is not at contiguous positions {positions[:10]}")

    known = {i for attempt in history for i in attempt.event_ids}
    foreign = [e for e in events if not e.stream.startswith("$") and e.id not in known]
    for e in foreign[:3]:
        problems.add("foreign", f"{name}: {describe(e)} was never appended by the workload")
    if len(foreign) > 3:
        problems.add("foreign", f"{name}: {len(foreign)} events in all were never appended by the workload")
    return counts


def check_answers(node: NodeData, index: LogIndex, history: History, problems: Problems) -> None:
    """Did the answers tell the truth, judged against the final log (issue 11, points 1-3)?"""
    versions = {stream: len(events) for stream, events in index.by_stream.items()}
    by_stream_acked: dict[str, list[Attempt]] = {}
    owner: dict[str, Attempt] = {}
    for attempt in history:
        for event_id in attempt.event_ids:
            owner[event_id] = attempt
        if attempt.status == "ok" and attempt.reply and attempt.answered is not None:
            by_stream_acked.setdefault(attempt.stream, []).append(attempt)
    for attempts in by_stream_acked.values():
        attempts.sort(key=lambda a: a.answered)
    for attempt in history:
        reply = attempt.reply or {}
        current = reply.get("currentVersion")
        if attempt.status != "failed" or reply.get("error") != "wrong_expected_version" or not isinstance(current, int):
            continue
        what = f"the 409 to the append to {attempt.stream!r} expecting version {attempt.expected_version}"
        final = versions.get(attempt.stream, 0)
        if current == attempt.expected_version:
            problems.add("false-409", f"{what} names currentVersion {current}, the version it expected")
        elif current > final:
            problems.add("false-409", f"{what} names currentVersion {current}, never committed (the stream ends "
                                      f"at version {final})")
        elif current > 0:
            writer = owner.get(index.by_stream[attempt.stream][current - 1].id)
            if writer is not None and attempt.answered is not None and writer.started > attempt.answered:
                problems.add("false-409", f"{what} names currentVersion {current}, written by an append sent "
                                          f"{writer.started - attempt.answered:.3f}s after the 409 was answered")
        overtaken = [a for a in by_stream_acked.get(attempt.stream, ())
                     if a.answered < attempt.started and a.reply.get("version", 0) > current]
        if overtaken:
            problems.add("false-409", f"{what} names currentVersion {current}, but version "
                                      f"{overtaken[-1].reply['version']} was acknowledged before it was sent")
    # a node's own reads never go backwards; a consistency=leader read is the leader's answer, which a lagging
    # node's next own read may well be behind, so those are judged against the acknowledged appends instead
    last_seen: dict[tuple[str, str, str, str | None], Read] = {}
    for read in sorted((r for r in history.reads if r.version is not None), key=lambda r: r.started):
        key = (read.client, read.node, read.stream, read.consistency)
        before = last_seen.get(key)
        if before is not None and before.answered <= read.started and read.version < before.version:
            problems.add("read-backwards", f"client {read.client} read {read.stream!r} through {read.node} at "
                                           f"version {before.version}, then at {read.version}")
        last_seen[key] = read
        if read.consistency == "leader":
            acked = [a.reply.get("version", 0) for a in by_stream_acked.get(read.stream, ())
                     if a.answered < read.started]
            if acked and read.version < max(acked):
                problems.add("stale-leader-read", f"a consistency=leader read of {read.stream!r} through "
                                                  f"{read.node} returned version {read.version}, but version "
                                                  f"{max(acked)} was acknowledged before it began")


def placement_problem(attempt: Attempt, found: list[Ev | None]) -> str | None:
    """Why the events of one atomic append are not where an atomic append puts them (None when they are)."""
    if any(e is None for e in found):
        return "is not found at its positions"
    if any(e.stream != attempt.stream for e in found):
        return f"has events in another stream ({next(e.stream for e in found if e.stream != attempt.stream)!r})"
    if any(b.position != a.position + 1 or b.version != a.version + 1 for a, b in zip(found, found[1:])):
        return f"is not contiguous (positions {[e.position for e in found][:10]})"
    expected = attempt.expected_version
    if isinstance(expected, int) and not isinstance(expected, bool) and found[0].version != expected + 1:
        return f"starts at version {found[0].version} although it expected version {expected}"
    return None


def analyse(nodes: list[NodeData], history: History | None = None, problems: Problems | None = None) -> Report:
    """The verdict on already-read node data (and the workload's history, when given)."""
    problems = problems or Problems()
    readable = [n for n in nodes if n.error is None]
    for n in nodes:
        if n.error is not None:
            problems.add("unreachable", f"{n.url}: could not be read: {n.error}")
    readable, first_kept = trimmed_system_events(readable)
    indexes = [check_log(n, problems, first_kept) for n in readable]
    counts = {"acknowledged": 0, "unknown_present": 0, "unknown_absent": 0, "failed": 0}
    if readable:
        reference = readable[0]
        same_as_reference = [True] + [compare_nodes(reference, other, problems) for other in readable[1:]]
        if history is not None:
            # identical logs give identical answers: judge each distinct log once
            for i, (node, index) in enumerate(zip(readable, indexes)):
                if i == 0 or not same_as_reference[i]:
                    node_counts = check_history(node, index, history, problems)
                    if i == 0:
                        counts = node_counts
                        check_answers(node, index, history, problems)
    reference_node = readable[0] if readable else None
    return Report(
        ok=problems.total == 0,
        problems=problems.sentences(),
        problems_total=problems.total,
        nodes=len(nodes),
        events=len(reference_node.events) if reference_node else 0,
        streams=len(reference_node.listed) if reference_node else 0,
        heads={n.url: (n.head if n.error is None else None) for n in nodes},
        **counts,
    )


# -- reading nodes ----------------------------------------------------------------------------

async def read_head(client: AsyncEvstoreClient) -> int:
    page = await client.read_all(limit=1, backward=True)
    return int(page["head"])


async def wait_converged(clients: list[AsyncEvstoreClient], timeout: float) -> tuple[bool, dict[str, int | None]]:
    """Polls every node's $all head until all are equal (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    first = True
    while True:
        heads = await asyncio.gather(*(read_head(c) for c in clients), return_exceptions=True)
        if first and all(isinstance(h, ConnectionFailed) for h in heads):
            raise heads[0]  # no node to wait for: say so now (the CLI exits 3), not after the timeout
        first = False
        by_url = {c.url: (h if isinstance(h, int) else None) for c, h in zip(clients, heads)}
        values = set(by_url.values())
        if len(values) == 1 and None not in values:
            return True, by_url
        if time.monotonic() >= deadline:
            return False, by_url
        await asyncio.sleep(POLL_INTERVAL)  # replication has no event a client could await


async def read_node(client: AsyncEvstoreClient, *, read_streams: bool = True,
                    concurrency: int = READ_CONCURRENCY) -> NodeData:
    """Everything the checker compares, from one node. A failure becomes `NodeData.error`."""
    node = NodeData(client.url)
    try:
        cursor: int | None = 1
        while cursor is not None:
            page = await client.read_all(from_position=cursor, limit=PAGE, include_system=True)
            node.events.extend(to_ev(e) for e in page["events"])
            node.head = int(page["head"])
            following = page.get("next")
            cursor = following if following is not None and following != cursor else None
        async for entry in client.iter_streams(page_size=STREAM_LIST_PAGE):
            node.listed[entry["stream"]] = entry["version"]
        if read_streams:
            gate = asyncio.Semaphore(concurrency)

            async def one(stream: str) -> None:
                async with gate:
                    node.streams[stream] = await read_stream_view(client, stream, node.events)

            await asyncio.gather(*(one(s) for s in node.listed))
    except (EvstoreError, aiohttp.ClientError, asyncio.TimeoutError, KeyError, TypeError, ValueError) as exc:
        node.error = f"{type(exc).__name__}: {exc}"
    return node


async def read_stream_view(client: AsyncEvstoreClient, stream: str, all_events: list[Ev]) -> StreamView:
    events: list[Ev] = []
    version = 0
    try:
        async for page in client.iter_stream_pages(stream, page_size=PAGE):
            version = page["version"]
            for raw in page["events"]:
                e = to_ev(raw)
                same = all_events[e.position - 1] if 1 <= e.position <= len(all_events) else None
                events.append(same if same == e else e)  # share the $all tuple: half the memory on big logs
    except StreamNotFound:
        return StreamView(0, [], "not_found")
    except StreamDeleted:
        return StreamView(0, [], "deleted")
    return StreamView(version, events)


async def check_cluster(urls: list[str], history: History | None = None, *, converge_timeout: float = 30.0,
                        read_streams: bool = True, token: str | None = None) -> Report:
    """Waits (bounded) for every node's $all head to agree, reads every node and judges."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with aiohttp.ClientSession(headers=headers) as session:
        clients = [AsyncEvstoreClient(u, session=session, timeout=30.0, retries=3) for u in urls]
        problems = Problems()
        converged, heads = await wait_converged(clients, converge_timeout)
        if not converged:
            shown = ", ".join(f"{u}={'unreachable' if h is None else h}" for u, h in heads.items())
            problems.add("convergence", f"$all heads did not agree within {converge_timeout:g}s: {shown}")
        nodes = await asyncio.gather(*(read_node(c, read_streams=read_streams) for c in clients))
    return analyse(list(nodes), history, problems)
