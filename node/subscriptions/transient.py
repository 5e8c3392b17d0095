"""Transient subscriptions: catch-up from the log, then live, with nothing skipped or repeated.

One fan-out per node awaits the log's visible (committed) position, reads each newly committed range
once and offers its records to every attached subscriber's bounded buffer. A subscriber attaches first
(from then on every committed record past the fan-out's position at that moment, `floor`, reaches its
buffer), then reads the log itself from its start up to `floor`, then delivers its buffer, dropping what
the reads already delivered. A subscriber whose buffer overflows is detached (the fan-out stops feeding
it), delivers what it buffered, and catches up by reading from the first record it lost: a stalled
consumer costs at most one buffer, however far the log moves.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from ..errors import StreamNotFound, Unavailable
from ..log import AllFilter, Log
from ..storage import Record, RenderedEvent, rendered_json, rendered_position, rendered_version
from .selector import Selector, glob_literal, parse_json

log = logging.getLogger("evstore.subscriptions")

FANOUT_BATCH = 1024  # records per read of the fan-out
CATCH_UP_PAGE = 1024  # records per catch-up read of one subscriber
BUFFER_EVENTS = 1024  # a subscriber's live buffer: at most this many events ...
BUFFER_BYTES = 8 << 20  # ... and this many bytes of data and metadata (at least one event)
DEFAULT_MAX_SUBSCRIBERS = 1000
FANOUT_RETRY = 1.0  # seconds before the fan-out reads again after a failed read
CLOSE_GRACE = 2.0  # seconds a stopping node gives subscribers to take their last message

_UNPARSED = object()


class Committed:
    """A committed record as subscribers share it: its data parsed at most once (for payload selectors)
    and its wire form encoded at most once (by the first sender)."""
    __slots__ = ("record", "size", "wire", "frame", "_data")

    def __init__(self, record: Record) -> None:
        self.record = record
        self.size = len(record.data) + len(record.metadata) + 64
        self.wire: bytes | None = None  # the message as JSON
        self.frame: bytes | None = None  # the message as one Server-Sent Event
        self._data: Any = _UNPARSED

    @property
    def position(self) -> int:
        return self.record.position

    def data(self) -> Any:
        if self._data is _UNPARSED:
            try:
                self._data = parse_json(self.record.data)
            except (ValueError, RecursionError) as exc:
                self._data = exc
        if isinstance(self._data, Exception):
            raise self._data
        return self._data


def _version(record: Record) -> int:
    return record.version


class Rendered:
    """A caught-up event read as the reply's JSON (a storage.RenderedEvent row): its wire form is made in the
    reader thread, as for paged reads."""
    __slots__ = ("position", "wire", "frame")

    def __init__(self, event: RenderedEvent) -> None:
        self.position = rendered_position(event)
        self.wire = b'{"event":' + rendered_json(event) + b"}"
        self.frame: bytes | None = None


@dataclass(frozen=True, slots=True)
class Message:
    kind: str  # "event", "caughtUp", "heartbeat" or "closed" (the node is shutting down)
    position: int  # the event's position, else the last scanned position (a resume point)
    item: Committed | None = None
    live: bool = False  # delivered from the fan-out (not read back from the log)


@dataclass(frozen=True, slots=True)
class Start:
    """Where a subscription starts: `position` (inclusive), or `version` of the selector's stream, or (neither)
    the end: only what commits after subscribing. With both (a resume), from `position`, skipping the stream's
    versions below `version`."""
    position: int | None = None
    version: int | None = None


def catch_up_filter(selector: Selector) -> AllFilter:
    """What the log's SQL can pre-filter for a selector (the payload is matched here, on every record)."""
    system = selector.include_system
    if selector.stream is not None:
        return AllFilter(stream_pattern=glob_literal(selector.stream), include_system=system)
    return AllFilter(tuple(selector.types), selector.type_prefix, selector.stream_prefix, selector.stream_pattern,
                     include_system=system)


class Fanout:
    """Reads each committed range once and offers it to the attached subscribers. `position`: every record
    at or below it has been offered to every subscriber attached at the time."""

    def __init__(self, log_: Log, *, batch: int = FANOUT_BATCH) -> None:
        self._log = log_
        self._batch = batch
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task | None = None
        self.position = 0

    def attach(self, subscriber: "Subscription") -> int:
        """Feed `subscriber` every record past the returned position."""
        if self._task is None:
            self.position = self._log.visible.position
            self._task = asyncio.get_running_loop().create_task(self._run(), name="subscriptions-fanout")
        self._subscribers.add(subscriber)
        return self.position

    def detach(self, subscriber: "Subscription") -> None:
        self._subscribers.discard(subscriber)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        visible = self._log.visible
        while True:
            await visible.wait_for(self.position + 1)
            target = visible.position
            if not self._subscribers:
                self.position = target  # nobody to offer it to: whoever attaches next reads it back
                continue
            try:
                while self.position < target:
                    page = await self._log.read_all(start=self.position + 1, limit=self._batch)
                    records = [r for r in page.records if r.position <= target]
                    # a page stops at its limit or at its byte budget (16 MiB of events): the rest up to the
                    # target comes in the next pass, from `next`; no `next`, or one past it: all scanned
                    scanned = page.next - 1 if page.next is not None and page.next <= target else target
                    items = [Committed(r) for r in records]
                    matched: dict = {}
                    for subscriber in list(self._subscribers):  # a copy: an overflow detaches
                        subscriber.offer(items, matched)
                    self.position = scanned
            except Exception as exc:  # e.g. a record that fails its checksum: subscribers read it themselves
                log.warning("subscription fan-out could not read past %d: %s", self.position, exc)
                for subscriber in list(self._subscribers):
                    subscriber.lose_from(self.position + 1)
                await asyncio.sleep(FANOUT_RETRY)


def _hashable(selector: Selector) -> Selector | None:
    try:
        hash(selector)
    except TypeError:  # a payload selector (a dict): matched per subscriber
        return None
    return selector


class Subscription:
    """One subscriber: iterate `batches()` for lists of Messages in log order."""

    def __init__(self, hub: "TransientSubscriptions", selector: Selector, first: int, *, heartbeat: float,
                 buffer_events: int, buffer_bytes: int, from_version: int | None = None) -> None:
        self._hub = hub
        self.selector = selector
        self._selector_key = _hashable(selector)
        self._filter = catch_up_filter(selector)
        self._cursor = first  # the next position this subscriber may deliver
        # a start version the stream had not reached: its events below it, committed past `first`, are skipped
        self._from_version = from_version
        self._heartbeat = heartbeat
        self._buffer: collections.deque[Committed] = collections.deque()
        self._buffered_bytes = 0
        self._max_events = buffer_events
        self._max_bytes = buffer_bytes
        self._lost_from: int | None = None  # set on overflow: the first matching record not buffered
        self._attached = False
        self._live = False  # delivering from the buffer (not reading the log)
        self._ended = False  # closed: the subscriber went away
        self._wake = asyncio.Event()
        self.serving: asyncio.Task | None = asyncio.current_task()  # cancelled if still open after a shutdown's grace

    @property
    def scanned(self) -> int:
        """Every matching event at or below this position has been handed out: a resume point."""
        if self._live and self._attached and not self._buffer and self._lost_from is None:
            return max(self._cursor - 1, self._hub.fanout.position)
        return self._cursor - 1

    # called by the fan-out, synchronously -----------------------------------------------------
    def offer(self, items: list[Committed], matched: dict | None = None) -> None:
        """Buffer what of `items` this subscriber selects. `matched` (selector -> its items) is shared by the
        subscribers of one offer, so subscribers with equal selectors match the records once."""
        key = self._selector_key
        found = matched.get(key) if matched is not None and key is not None else None
        if found is None:
            selector = self.selector
            found = [item for item in items if selector.matches_stream(item.record.stream, item.record.type)
                     and selector.matches_data(item.data)]
            if matched is not None and key is not None:
                matched[key] = found
        buffer = self._buffer
        for item in found:
            if buffer and (len(buffer) >= self._max_events or self._buffered_bytes + item.size > self._max_bytes):
                self.lose_from(item.position)
                return
            buffer.append(item)
            self._buffered_bytes += item.size
        if found:
            self._wake.set()

    def lose_from(self, position: int) -> None:
        """Stop buffering: matching records from `position` on are read back from the log instead."""
        if self._lost_from is None:
            self._lost_from = position
            self._hub.overflowed()
        self._detach()
        self._wake.set()

    # the subscriber's own task ----------------------------------------------------------------
    def _attach(self) -> int:
        self._buffer.clear()
        self._buffered_bytes = 0
        self._lost_from = None
        self._attached = True
        return self._hub.fanout.attach(self)

    def _detach(self) -> None:
        if self._attached:
            self._attached = False
            self._hub.fanout.detach(self)

    async def batches(self) -> AsyncIterator[list[Message]]:
        caught_up = False
        last_sent = time.monotonic()
        log_ = self._hub.log
        while self._delivering:
            # catch up from the log; what commits past the fan-out's position is buffered. The fan-out may run
            # behind the log: read at least what the log showed at attaching, so that caughtUp comes after every
            # event committed before it (the buffer's copies of them are skipped by the cursor)
            floor = max(self._attach(), log_.visible.position)
            while self._cursor <= floor:
                if self.selector.payload is None:  # the log's filter is the whole selector: read rendered JSON
                    page = await log_.read_all(start=self._cursor, limit=CATCH_UP_PAGE, filters=self._filter,
                                               rendered=True)
                    found = [Message("event", rendered_position(e), Rendered(e)) for e in page.records
                             if rendered_position(e) >= self._cursor and self._reached(rendered_version, e)]
                else:
                    page = await log_.read_all(start=self._cursor, limit=CATCH_UP_PAGE, filters=self._filter)
                    found = [Message("event", r.position, Committed(r)) for r in page.records
                             if r.position >= self._cursor and self._matches(r) and self._reached(_version, r)]
                self._cursor = max(self._cursor, (page.next - 1 if page.next is not None else page.head) + 1)
                if found:
                    yield found
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent >= self._heartbeat:
                    yield [Message("heartbeat", self._cursor - 1)]
                    last_sent = time.monotonic()
                if not self._delivering:
                    break
            if self._lost_from is None and not caught_up and self._delivering:
                caught_up = True
                yield [Message("caughtUp", self._cursor - 1)]
                last_sent = time.monotonic()
            self._live = True
            while self._delivering:  # live: the buffer, until it overflows
                found = []
                while self._buffer:
                    item = self._buffer.popleft()
                    self._buffered_bytes -= item.size
                    if item.position >= self._cursor and self._reached(_version, item.record):
                        found.append(Message("event", item.position, item, live=True))
                        self._cursor = item.position + 1
                if found:
                    yield found
                    last_sent = time.monotonic()
                    continue
                if self._lost_from is not None:
                    self._cursor = max(self._cursor, self._lost_from)
                    self._live = False
                    break  # attach again and read back what was lost
                self._wake.clear()
                try:
                    async with asyncio.timeout(max(0.0, last_sent + self._heartbeat - time.monotonic())):
                        await self._wake.wait()
                except TimeoutError:
                    yield [Message("heartbeat", self.scanned)]
                    last_sent = time.monotonic()
        if not self._ended:
            yield [Message("closed", self.scanned)]

    @property
    def _delivering(self) -> bool:
        return not (self._hub.closing or self._ended)

    def _reached(self, version_of, event) -> bool:
        """False for an event of the stream below the start version (only until the stream reaches it)."""
        if self._from_version is None:
            return True
        if version_of(event) < self._from_version:
            return False
        self._from_version = None
        return True

    def _matches(self, record: Record) -> bool:
        if not self.selector.matches_stream(record.stream, record.type):
            return False
        return self.selector.payload is None or self.selector.matches_data(lambda: parse_json(record.data))

    def close(self) -> None:
        """The subscriber is gone (also while `batches()` waits: it ends): free its place. Idempotent."""
        self._ended = True
        self._wake.set()
        self._detach()
        self._hub._closed(self)


class TransientSubscriptions:
    """The node's transient subscriptions: the fan-out, the subscriber limit, and a clean stop."""

    def __init__(self, log_: Log, *, max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
                 buffer_events: int = BUFFER_EVENTS, buffer_bytes: int = BUFFER_BYTES, metrics=None) -> None:
        self.log = log_
        self.fanout = Fanout(log_)
        self.max_subscribers = max_subscribers
        self._buffer_events = buffer_events
        self._buffer_bytes = buffer_bytes
        self._metrics = metrics
        self._open: set[Subscription] = set()
        self._reserved = 0
        self._all_closed = asyncio.Event()
        self.closing = False

    @property
    def count(self) -> int:
        return len(self._open)

    async def subscribe(self, selector: Selector, start: Start, *, heartbeat: float) -> Subscription:
        """A new subscription, or Unavailable at the limit (or when stopping); StreamDeleted for a stream
        selector naming a hard-deleted stream."""
        if self.closing:
            raise Unavailable("the node is shutting down", reason="shutting_down")
        if len(self._open) + self._reserved >= self.max_subscribers:
            raise Unavailable(f"this node serves at most {self.max_subscribers} subscribers",
                              reason="too_many_subscribers", retry_after=5)
        self._reserved += 1
        try:
            first = await self._first_position(selector, start)
        finally:
            self._reserved -= 1
        subscription = Subscription(self, selector, first, heartbeat=heartbeat, buffer_events=self._buffer_events,
                                    buffer_bytes=self._buffer_bytes, from_version=start.version)
        self._open.add(subscription)
        self._gauge()
        return subscription

    async def _first_position(self, selector: Selector, start: Start) -> int:
        if selector.stream is not None and start.version is None:  # (read_stream below refuses it for a version)
            await self.log.refuse_hard_deleted(selector.stream)
        if start.position is not None:
            return start.position
        committed = self.log.visible.position
        if start.version is None:
            return committed + 1
        try:
            page = await self.log.read_stream(selector.stream, start=start.version, limit=1)
        except StreamNotFound:
            return committed + 1  # its first event (version >= 1) commits after `committed`
        # no version >= V at or below `committed` means the first such event commits after it
        return page.records[0].position if page.records else committed + 1

    def _closed(self, subscription: Subscription) -> None:
        self._open.discard(subscription)
        self._gauge()
        if self.closing and not self._open:
            self._all_closed.set()

    def overflowed(self) -> None:
        if self._metrics is not None:
            self._metrics.subscriber_overflows.inc()

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.subscribers.set(len(self._open))

    async def close(self, *, grace: float = CLOSE_GRACE) -> None:
        """End every subscription (each says so, with its resume position) and stop the fan-out. Subscribers
        still open after `grace` seconds (a consumer that stopped reading) have their serving task cancelled."""
        self.closing = True
        for subscription in list(self._open):
            subscription._wake.set()
        if self._open:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._all_closed.wait()
        for subscription in list(self._open):
            if subscription.serving is not None:
                subscription.serving.cancel()
        await self.fanout.close()
