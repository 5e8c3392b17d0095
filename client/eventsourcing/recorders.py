"""eventsourcing recorders on evstore.

- An aggregate is the stream `<prefix><originator id>`; its events are evstore events whose type is
  the topic, whose data is the stored state (binary) and whose metadata holds the originator version
  (see versions.py for how originator versions map to stream versions).
- Notification ids are `$all` positions; an application's notification log is `$all` read with the
  stream prefix (when there is one). Tracking records are never notifications.
- Tracking: `<prefix>~tracking-<upstream application>` holds one event per recorded position; each
  is appended with the tracking stream's expected version, so two processes cannot both record a
  position, and a process recorder appends it in the same multi-stream append as the events.
- One `insert_events` call is one atomic append, however many aggregates it spans.
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any, Sequence
from uuid import UUID

from eventsourcing.persistence import (AggregateRecorder, ApplicationRecorder, IntegrityError, Notification,
                                       ProcessRecorder, ProgrammingError, StoredEvent, Subscription, Tracking,
                                       TrackingRecorder)

from . import versions
from .store import MAX_READ_LIMIT, Append, Store, VersionConflicts, binary_event, event_bytes, translated_errors

TRACKING_TYPE = "~tracking"  # not a topic (no module:name), so never an aggregate event's type
TRACKING_INFIX = "~tracking-"
BASE_CACHE_SIZE = 100_000
CATCH_UP_PAGE = MAX_READ_LIMIT


class StreamNames:
    """Stream names of one application: aggregates under `prefix`, and originator ids back."""

    def __init__(self, prefix: str, *, originator_id_type: str = "uuid") -> None:
        self.prefix = prefix
        self.originator_id_type = originator_id_type

    def aggregate(self, originator_id: UUID | str) -> str:
        return f"{self.prefix}{originator_id}"

    def tracking(self, application_name: str) -> str:
        return f"{self.prefix}{TRACKING_INFIX}{application_name}"

    def originator_id(self, stream: str) -> UUID | str:
        text = stream[len(self.prefix):]
        return UUID(text) if self.originator_id_type == "uuid" else text


class EvstoreRecorder:
    def __init__(self, store: Store, names: StreamNames) -> None:
        self.store = store
        self.names = names


class _Bases:
    """The base (first originator version) of streams this process has seen; bounded, thread-safe."""

    def __init__(self, size: int = BASE_CACHE_SIZE) -> None:
        self._bases: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, stream: str) -> int | None:
        with self._lock:
            return self._bases.get(stream)

    def put(self, stream: str, base: int) -> None:
        with self._lock:
            self._bases[stream] = base
            self._bases.move_to_end(stream)
            while len(self._bases) > self._size:
                self._bases.popitem(last=False)


class EvstoreAggregateRecorder(EvstoreRecorder, AggregateRecorder):
    def __init__(self, store: Store, names: StreamNames) -> None:
        super().__init__(store, names)
        self._bases = _Bases()

    # -- writing ---------------------------------------------------------------------------

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        self._insert(stored_events, kwargs.get("tracking"))
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        """One atomic append of every event (and the tracking record); the events' `$all` positions."""
        groups = self._group(stored_events)
        if not groups and tracking is None:
            return []
        bases = {key: self._bases.get(self.names.aggregate(key)) for key in groups}
        for key, events in groups.items():
            if bases[key] is None:
                bases[key] = versions.guessed_base(events[0].originator_version)
        for attempt in (1, 2):
            appends = [self._append_of(key, events, bases[key]) for key, events in groups.items()]
            tracking_append = self._tracking_append(tracking) if tracking is not None else None
            if tracking_append is not None:
                appends.append(tracking_append)
            try:
                replies = self.store.append(appends)
            except VersionConflicts as conflicts:
                if attempt == 2:
                    raise IntegrityError(str(conflicts)) from None
                self._resolve(conflicts.current, groups, bases, tracking)
                continue
            for key, base in bases.items():
                self._bases.put(self.names.aggregate(key), base)  # type: ignore[arg-type]
            if tracking_append is not None:
                self._tracked(tracking, replies[-1])  # type: ignore[arg-type]
            return self._positions(replies, stored_events, groups)
        raise AssertionError("unreachable")

    @staticmethod
    def _group(stored_events: Sequence[StoredEvent]) -> dict[str, list[StoredEvent]]:
        groups: dict[Any, list[StoredEvent]] = {}
        for event in stored_events:
            groups.setdefault(event.originator_id, []).append(event)
        named: dict[str, list[StoredEvent]] = {}
        for originator_id, events in groups.items():
            if f"{originator_id}".startswith(TRACKING_INFIX):
                raise ProgrammingError(f"originator ids starting with {TRACKING_INFIX!r} name tracking streams")
            try:
                versions.check_contiguous([e.originator_version for e in events])
            except versions.NotContiguous as exc:
                raise IntegrityError(str(exc)) from None
            named[f"{originator_id}"] = events
        return named

    def _append_of(self, key: str, events: list[StoredEvent], base: int | None) -> Append:
        expected = versions.expected_stream_version(events[0].originator_version, base or 0)
        if expected < 0:
            raise IntegrityError(f"originator version {events[0].originator_version} precedes the first "
                                 f"event of {key}")
        return Append(self.names.aggregate(key), expected,
                      [binary_event(e.topic, e.state, {versions.ORIGINATOR_VERSION_KEY: e.originator_version})
                       for e in events])

    def _resolve(self, current: dict[str, int], groups: dict[str, list[StoredEvent]],
                 bases: dict[str, int | None], tracking: Tracking | None) -> None:
        """After a refused append: learn each failing stream's real base; a conflict that remains
        with the right base is a genuine one (the version exists): IntegrityError."""
        by_stream = {self.names.aggregate(key): key for key in groups}
        for stream, version in current.items():
            key = by_stream.get(stream)
            if key is None:
                self._tracking_conflict(stream, tracking)
                continue
            first = self.store.first_event(stream) if version else None
            if first is None:
                real = groups[key][0].originator_version  # an empty stream: the first event sets the base
            else:
                real = versions.base_of(first["metadata"][versions.ORIGINATOR_VERSION_KEY], first["version"])
            if real == bases[key]:
                wanted, last = groups[key][0].originator_version, real + version - 1
                if wanted > last + 1:
                    raise IntegrityError(f"{stream}: version {wanted} does not follow its last version {last} "
                                         f"(an aggregate's versions follow each other without a gap)")
                raise IntegrityError(f"{stream}: version {wanted} is taken")
            bases[key] = real

    def _tracking_append(self, tracking: Tracking) -> Append:
        raise ProgrammingError("an aggregate recorder records no tracking")

    def _tracked(self, tracking: Tracking, reply: dict[str, Any]) -> None:
        pass

    def _tracking_conflict(self, stream: str, tracking: Tracking | None) -> None:
        raise IntegrityError(f"{stream} changed")

    @staticmethod
    def _positions(replies: list[dict[str, Any]], stored_events: Sequence[StoredEvent],
                   groups: dict[str, list[StoredEvent]]) -> list[int]:
        """Each event's `$all` position: an append reply names the position of its last event."""
        by_event: dict[int, int] = {}
        for events, reply in zip(groups.values(), replies):
            first = reply["position"] - len(events) + 1
            for offset, event in enumerate(events):
                by_event[id(event)] = first + offset
        return [by_event[id(e)] for e in stored_events]

    # -- reading ---------------------------------------------------------------------------

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None, lte: int | None = None,
                      desc: bool = False, limit: int | None = None) -> list[StoredEvent]:
        stream = self.names.aggregate(originator_id)
        base = self._bases.get(stream)
        page = min(MAX_READ_LIMIT, limit + 2) if limit else MAX_READ_LIMIT
        if desc:
            raw = self.store.read_stream(stream, from_version=versions.backward_start(lte, base), limit=page,
                                         backward=True)
        else:
            start = versions.forward_start(gt, base)
            raw = self.store.read_stream(stream, from_version=start, limit=page)
        selected: list[StoredEvent] = []
        for event in raw:
            version = event["metadata"][versions.ORIGINATOR_VERSION_KEY]
            if base is None:
                base = versions.base_of(version, event["version"])
                self._bases.put(stream, base)
                if not desc and versions.forward_start(gt, base) != start and gt is not None and version > gt + 1:
                    return self.select_events(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)  # started late
            if desc:
                if lte is not None and version > lte:
                    continue
                if gt is not None and version <= gt:
                    break
            else:
                if gt is not None and version <= gt:
                    continue
                if lte is not None and version > lte:
                    break
            selected.append(StoredEvent(originator_id=originator_id, originator_version=version,
                                        topic=event["type"], state=event_bytes(event)))
            if limit is not None and len(selected) >= limit:
                break
        if base is None and not desc and gt is not None:  # read past the end on a guessed base: check it
            first = self.store.first_event(stream)
            if first is not None:
                base = versions.base_of(first["metadata"][versions.ORIGINATOR_VERSION_KEY], first["version"])
                self._bases.put(stream, base)
                if versions.forward_start(gt, base) != start:
                    return self.select_events(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)
        return selected


class EvstoreApplicationRecorder(EvstoreAggregateRecorder, ApplicationRecorder):
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._insert(stored_events, kwargs.get("tracking"))

    def notification(self, event: dict[str, Any]) -> Notification:
        return Notification(id=event["position"], originator_id=self.names.originator_id(event["stream"]),
                            originator_version=event["metadata"][versions.ORIGINATOR_VERSION_KEY],
                            topic=event["type"], state=event_bytes(event))

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None,
                             topics: Sequence[str] = (), *, inclusive_of_start: bool = True) -> list[Notification]:
        first = 1 if start is None else (start if inclusive_of_start else start + 1)
        selected: list[Notification] = []
        if limit <= 0 or (stop is not None and first > stop):
            return selected
        for event in self.store.read_all(from_position=max(1, first), limit=min(MAX_READ_LIMIT, limit),
                                         types=topics, stream_prefix=self.names.prefix):
            if stop is not None and event["position"] > stop:
                break
            if event["type"] == TRACKING_TYPE:
                continue
            selected.append(self.notification(event))
            if len(selected) >= limit:
                break
        return selected

    def max_notification_id(self) -> int | None:
        for event in self.store.read_all(limit=16, backward=True, stream_prefix=self.names.prefix):
            if event["type"] != TRACKING_TYPE:
                return event["position"]
        return None

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> "EvstoreSubscription":
        return EvstoreSubscription(self, gt=gt, topics=topics)


class EvstoreSubscription(Subscription[EvstoreApplicationRecorder]):
    """Notifications after `gt`, then live, without polling: what is already recorded comes in pages
    of `$all` (thousands per request), then an evstore transient subscription continues after the
    last one read (its replay covers whatever commits in between: nothing is skipped or repeated)."""

    def __init__(self, recorder: EvstoreApplicationRecorder, gt: int | None = None,
                 topics: Sequence[str] = ()) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._buffer: deque[Notification] = deque()
        self._live: Any = None
        self._caught_up = False
        self._lock = threading.Lock()

    def stop(self) -> None:
        super().stop()
        with self._lock:
            live = self._live
        if live is not None:
            live.stop()

    def __next__(self) -> Notification:
        while not self._has_been_stopped:
            if self._buffer:
                notification = self._buffer.popleft()
                self._last_notification_id = notification.id
                return notification
            if not self._caught_up:
                self._catch_up()
                continue
            with translated_errors():  # a node gone longer than the reconnect timeout: OperationalError
                event = next(self._live_subscription())  # StopIteration once stopped
            if event["type"] == TRACKING_TYPE or (self._topics and event["type"] not in self._topics):
                continue
            notification = self._recorder.notification(event)
            self._last_notification_id = notification.id
            return notification
        raise StopIteration

    def _catch_up(self) -> None:
        page = self._recorder.select_notifications(self._last_notification_id or 0, CATCH_UP_PAGE,
                                                   topics=self._topics, inclusive_of_start=False)
        self._buffer.extend(page)
        self._caught_up = len(page) < CATCH_UP_PAGE

    def _live_subscription(self) -> Any:
        with self._lock:
            if self._live is None:
                selector: dict[str, Any] = {}
                prefix = self._recorder.names.prefix
                if prefix:
                    selector["stream_prefix"] = prefix
                elif self._topics:
                    selector["types"] = list(self._topics)
                if self._last_notification_id:
                    selector["after"] = self._last_notification_id
                else:
                    selector["start"] = "start"
                self._live = self._recorder.store.subscribe(**selector)
                self._live.__enter__()
            live = self._live
        if self._has_been_stopped:
            live.stop()
        return live


class EvstoreTrackingRecorder(EvstoreRecorder, TrackingRecorder):
    """Tracking records of processed upstream positions, one stream per upstream application."""

    def __init__(self, store: Store, names: StreamNames) -> None:
        super().__init__(store, names)
        self._tracking_state: dict[str, tuple[int, int | None]] = {}  # stream -> (version, max id)
        self._tracking_lock = threading.Lock()

    def insert_tracking(self, tracking: Tracking) -> None:
        self._append_tracking(tracking, [])

    def record(self, tracking: Tracking, appends: Sequence[Append]) -> list[dict[str, Any]]:
        """Write a read model's changes (`appends` to its own streams, each with its expected version)
        atomically with the tracking record: the position is processed once or not at all. IntegrityError
        when it was already recorded. Returns the append replies, the tracking record's last."""
        return self._append_tracking(tracking, list(appends))

    def _append_tracking(self, tracking: Tracking, appends: list[Append]) -> list[dict[str, Any]]:
        """`appends` (other streams' parts, written atomically with it) plus the tracking record."""
        for attempt in (1, 2):
            appends_now = [*appends, self._tracking_append(tracking)]
            try:
                replies = self.store.append(appends_now)
            except VersionConflicts as conflicts:
                stream = self.names.tracking(tracking.application_name)
                if attempt == 2 or set(conflicts.current) - {stream}:
                    raise IntegrityError(str(conflicts)) from None
                self._tracking_conflict(stream, tracking)
                continue
            self._tracked(tracking, replies[-1])
            return replies
        raise AssertionError("unreachable")

    def _tracking_append(self, tracking: Tracking) -> Append:
        stream = self.names.tracking(tracking.application_name)
        version, max_id = self._state(stream)
        if max_id is not None and tracking.notification_id <= max_id:
            raise IntegrityError(f"{tracking.application_name} position {tracking.notification_id} is already "
                                 f"tracked (at {max_id})")
        return Append(stream, version, [{"type": TRACKING_TYPE, "data": {"notificationId": tracking.notification_id}}])

    def _state(self, stream: str, *, refresh: bool = False) -> tuple[int, int | None]:
        with self._tracking_lock:
            known = None if refresh else self._tracking_state.get(stream)
        if known is not None:
            return known
        last = self.store.last_event(stream)
        state = (0, None) if last is None else (last["version"], last["data"]["notificationId"])
        with self._tracking_lock:
            self._tracking_state[stream] = state
        return state

    def _tracked(self, tracking: Tracking, reply: dict[str, Any]) -> None:
        with self._tracking_lock:
            self._tracking_state[reply["stream"]] = (reply["version"], tracking.notification_id)

    def _tracking_conflict(self, stream: str, tracking: Tracking | None) -> None:
        """Another writer moved the tracking stream: re-read it; still behind us means retry."""
        version, max_id = self._state(stream, refresh=True)
        if tracking is None or (max_id is not None and tracking.notification_id <= max_id):
            raise IntegrityError(f"{stream}: position {tracking and tracking.notification_id} is already tracked")

    def max_tracking_id(self, application_name: str) -> int | None:
        return self._state(self.names.tracking(application_name), refresh=True)[1]


class EvstoreProcessRecorder(EvstoreTrackingRecorder, EvstoreApplicationRecorder, ProcessRecorder):
    """Events and the tracking record of the upstream position they came from, in one atomic append."""
