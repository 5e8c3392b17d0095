"""Persistent subscriptions: server-side, at-least-once, acked, on the leader only ("follow the leader").

State lives in the log, so it replicates and survives restarts:
- `$subscriptions`: SubscriptionCreated / SubscriptionUpdated / SubscriptionDeleted (the definitions);
- `$sub-<name>-checkpoint`: Checkpoint events (`maxCount` 10);
- `$sub-<name>-parked`: Parked events (references to the parked event) and ParkedReplayed markers
  (`maxCount` 10,000).
Each definition carries an incarnation id, and checkpoints and parked entries name it, so a subscription
deleted and created again under the same name starts afresh.

Delivery runs where the node leads: on becoming leader the service waits until everything the node holds is
committed, loads the definitions, checkpoints and parked entries, and resumes; on losing leadership it stops
and closes its consumers. Only what `log.visible` covers is ever read, so no uncommitted event is delivered.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import orjson

from ...ids import uuid7_bytes
from ..errors import NotLeader, StreamDeleted, StreamNotFound, Unavailable, WrongExpectedVersion
from ..log import AllFilter, Log, NewEvent
from ..position import WatchedPosition
from ..storage import Record
from .delivery import Delivery, DeliveryState, Pending
from .settings import (MAX_SUBSCRIPTIONS, SubscriptionExists, SubscriptionNotFound, SubscriptionSettings,
                       TooManySubscriptions, apply_changes, parse_settings)

log = logging.getLogger("evstore.subscriptions")

SUBSCRIPTIONS_STREAM = "$subscriptions"
CREATED, UPDATED, DELETED = "SubscriptionCreated", "SubscriptionUpdated", "SubscriptionDeleted"
CHECKPOINT_TYPE, PARKED_TYPE, REPLAYED_TYPE = "Checkpoint", "Parked", "ParkedReplayed"
CHECKPOINTS_KEPT = 10
PARKED_KEPT = 10_000
READ_BATCH = 500
PAGE = 4096
LOAD_WAIT = 5.0  # how long a request waits for a new leader to load its subscriptions before a 503
RETRY_PAUSE = 1.0  # after a failed read or write of the subscription's own state
FINAL_CHECKPOINT_WAIT = 2.0

# WebSocket close codes sent to consumers (see README "Persistent subscriptions")
CLOSE_DELETED, CLOSE_GOING_AWAY, CLOSE_UPDATED, CLOSE_NOT_LEADER = 1000, 1001, 1012, 4001


def checkpoint_stream(name: str) -> str:
    return f"$sub-{name}-checkpoint"


def parked_stream(name: str) -> str:
    return f"$sub-{name}-parked"


@dataclass(slots=True)
class Definition:
    name: str
    settings: SubscriptionSettings
    incarnation: str
    start: int  # the checkpoint before anything is delivered (startFrom, resolved at creation)
    created: int  # microseconds


@dataclass(slots=True)
class ParkedEntry:
    parked_version: int  # its version in the parked stream
    stream: str
    version: int
    position: int
    event_id: str
    reason: str
    attempts: int
    parked_at: int  # microseconds


@dataclass(slots=True)
class Closed:
    """What a consumer's outbox says last: why it is closed, and where to go."""
    code: int
    reason: str
    message: str
    leader: dict | None = None


def _system_event(event_type: str, data: dict) -> NewEvent:
    return NewEvent(uuid7_bytes()[0], event_type, orjson.dumps(data), b"{}", given_id=False)


async def read_whole_stream(log_: Log, stream: str) -> list[Record]:
    """Every visible event of a (small, retention-bounded) system stream; [] when it does not exist."""
    records: list[Record] = []
    start: int | None = 1
    while start is not None:
        try:
            page = await log_.read_stream(stream, start, PAGE, False)
        except (StreamNotFound, StreamDeleted):
            return records
        records.extend(page.records)
        start = page.next
    return records


class SubscriptionRuntime:
    """One subscription while this node delivers it: a reader that follows the log into the delivery state,
    and a maintenance task for ack timeouts, parking and checkpoints."""

    def __init__(self, definition: Definition, log_: Log, *, checkpoint: int, parked: list[ParkedEntry],
                 parked_keys: frozenset[int] = frozenset(), metrics=None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.definition = definition
        self.name = definition.name
        self.settings = definition.settings
        self.log = log_
        self.metrics = metrics
        self.clock = clock
        self.state = DeliveryState(self.settings, checkpoint=checkpoint, serial=random.randrange(1 << 40))
        self.written_checkpoint = checkpoint
        self.parked = parked
        # events parked after the last written checkpoint: the main sequence passes them as settled
        self._parked_keys = {key for key in parked_keys if key > checkpoint}
        self.replay_up_to = 0  # a replay is under way up to this parked version
        self.head = 0
        self.changes = WatchedPosition()  # moves on every change: fetches and the maintenance task await it
        self.outboxes: dict[str, asyncio.Queue] = {}
        self.stopped = False
        self._cursor = checkpoint + 1
        self._tasks: list[asyncio.Task] = []
        self._last_write = clock()
        self._settled_at_write = 0
        self._pause_until = 0.0
        self._redeliveries_seen = 0
        f = self.settings.filter
        self._filter = None if f is None else AllFilter(types=f.types, type_prefix=f.type_prefix,
                                                        stream_prefix=f.stream_prefix,
                                                        stream_pattern=f.stream_pattern)
        self._gauges = None
        if metrics is not None:
            label = {"subscription": self.name}
            self._gauges = (metrics.subscription_lag.labels(**label), metrics.subscription_in_flight.labels(**label),
                            metrics.subscription_parked.labels(**label), metrics.subscription_consumers.labels(**label),
                            metrics.subscription_redeliveries.labels(**label))

    # lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop(), name=f"evstore-sub-read-{self.name}"),
                       loop.create_task(self._maintain_loop(), name=f"evstore-sub-maintain-{self.name}")]
        self._poke()

    async def stop(self, closed: Closed) -> None:
        """Stop delivering and close every consumer (their un-acked events are redelivered wherever the
        subscription runs next)."""
        self.stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for outbox in self.outboxes.values():
            outbox.put_nowait(closed)
        self.outboxes.clear()
        self.changes.advance(self.changes.position + 1)
        if self.metrics is not None:
            for metric in (self.metrics.subscription_lag, self.metrics.subscription_in_flight,
                           self.metrics.subscription_parked, self.metrics.subscription_consumers,
                           self.metrics.subscription_redeliveries):
                with contextlib.suppress(KeyError):
                    metric.remove(self.name)

    async def write_final_checkpoint(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._write_checkpoint(self.state.checkpoint), FINAL_CHECKPOINT_WAIT)

    def _poke(self) -> None:
        """Something changed: hand events to push consumers, wake whoever waits, update the gauges."""
        if self.stopped:
            return
        for consumer_id, batch in self.state.dispatch(self.clock()).items():
            self.outboxes[consumer_id].put_nowait(batch)
        self.changes.advance(self.changes.position + 1)
        if self._gauges is not None:
            lag, in_flight, parked, consumers, redeliveries = self._gauges
            lag.set(max(0, self.current_head() - self.state.checkpoint))
            in_flight.set(self.state.in_flight)
            parked.set(len(self.parked))
            consumers.set(len(self.state.consumers))
            if self.state.redeliveries > self._redeliveries_seen:
                redeliveries.inc(self.state.redeliveries - self._redeliveries_seen)
                self._redeliveries_seen = self.state.redeliveries

    def current_head(self) -> int:
        """The subscription's head: the visible position ($all), or the stream's version as last read."""
        return self.log.visible.position if self._filter is not None else self.head

    # consumers ---------------------------------------------------------------------------------
    def connect(self, consumer_id: str) -> asyncio.Queue:
        """A push (WebSocket) consumer; its outbox receives lists of Delivery, then a Closed."""
        self.state.add_consumer(consumer_id, push=True, now=self.clock())
        outbox: asyncio.Queue = asyncio.Queue()
        self.outboxes[consumer_id] = outbox
        self._poke()
        return outbox

    def disconnect(self, consumer_id: str) -> None:
        if self.outboxes.pop(consumer_id, None) is None and consumer_id not in self.state.consumers:
            return
        self.state.remove_consumer(consumer_id)
        self._poke()

    async def fetch(self, consumer_id: str, limit: int, wait: float) -> list[Delivery]:
        deadline = self.clock() + wait
        self.state.begin_fetch(consumer_id, self.clock())
        try:
            while not self.stopped:
                got = self.state.take(consumer_id, limit, self.clock())
                if got:
                    self._poke()
                    return got
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                await self.changes.wait_for(self.changes.position + 1, timeout=remaining)
            return []
        finally:
            self.state.end_fetch(consumer_id)

    def ack(self, ids: list[str]) -> tuple[list[str], list[str]]:
        result = self.state.ack(ids)
        self._poke()
        return result

    def nack(self, ids: list[str], action: str) -> tuple[list[str], list[str]]:
        result = self.state.nack(ids, action)
        self._poke()
        return result

    # reading the log ---------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        while True:
            if self.state.room <= 0:  # read ahead no further until events settle
                await self.changes.wait_for(self.changes.position + 1)
                continue
            try:
                caught_up, seen = await self._read_once(min(self.state.room, READ_BATCH))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("subscription %s: reading the log failed", self.name)
                await asyncio.sleep(RETRY_PAUSE)  # bounded pause before reading again
                continue
            self._poke()
            if caught_up:
                await self.log.visible.wait_for(seen + 1)  # no polling: the next commit wakes us

    async def _read_once(self, limit: int) -> tuple[bool, int]:
        """Read the next events into the state; (caught up, the visible position the read saw)."""
        state = self.state
        if self._filter is not None:
            page = await self.log.read_all(self._cursor, limit, False, self._filter)
            for record in page.records:
                if not record.stream.startswith("$") and record.position > state.scanned:
                    self._add(record.position, record)
            state.scanned_to(page.next - 1 if page.next is not None else page.head)
            self._cursor = state.scanned + 1
            return page.next is None, page.head
        seen = self.log.visible.position
        try:
            page = await self.log.read_stream(self.settings.stream, self._cursor, limit, False)
        except (StreamNotFound, StreamDeleted):
            return True, seen
        for record in page.records:
            if record.version > state.scanned:
                self._add(record.version, record)
        # versions the read skipped are gone (maxCount, truncateBefore, maxAge, scavenge): nothing to wait for
        state.scanned_to(page.records[-1].version if page.records else page.version)
        self._cursor = state.scanned + 1
        self.head = page.version
        return page.next is None, seen

    def _add(self, key: int, record: Record) -> None:
        if key in self._parked_keys:
            self._parked_keys.discard(key)
            self.state.scanned_to(key)
        else:
            self.state.add(key, record.stream, record)

    # ack timeouts, parking, checkpoints --------------------------------------------------------
    async def _maintain_loop(self) -> None:
        while True:
            seen = self.changes.position
            try:
                await self._maintain_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("subscription %s: maintenance failed", self.name)
                self._pause_until = self.clock() + RETRY_PAUSE
            deadlines = [d for d in (self.state.next_deadline(), self._checkpoint_due()) if d is not None]
            wake = min(deadlines) if deadlines else None
            if self.clock() < self._pause_until:  # after a failed write: nothing before the pause ends
                wake = self._pause_until if wake is None else max(wake, self._pause_until)
            timeout = None if wake is None else max(0.0, wake - self.clock())
            await self.changes.wait_for(seen + 1, timeout=timeout)

    async def _maintain_once(self) -> None:
        if self.state.expire(self.clock()):
            self._poke()
        if self.clock() < self._pause_until:
            return
        await self._write_parked()
        await self._finish_replay()
        due = self._checkpoint_due()
        if due is not None and due <= self.clock():
            await self._write_checkpoint(self.state.checkpoint)

    def _settled(self) -> int:
        return self.state.acked + self.state.skipped + self.state.parked

    def _checkpoint_due(self) -> float | None:
        """When the checkpoint should be written next (None: it did not move)."""
        if self.state.checkpoint <= self.written_checkpoint:
            return None
        if self._settled() - self._settled_at_write >= self.settings.checkpoint_after_events:
            return self.clock()
        return self._last_write + self.settings.checkpoint_after_seconds

    async def _write_checkpoint(self, checkpoint: int) -> None:
        """`checkpoint` is the state's at the time of the call: never ahead of an unsettled event."""
        if checkpoint <= self.written_checkpoint:
            return
        settled = self._settled()
        try:
            await self.log.append(checkpoint_stream(self.name), "any", [_system_event(
                CHECKPOINT_TYPE, {"checkpoint": checkpoint, "incarnation": self.definition.incarnation})])
        except (Unavailable, WrongExpectedVersion) as exc:
            log.warning("subscription %s: checkpoint %d not written: %s", self.name, checkpoint, exc.message)
            self._pause_until = self.clock() + RETRY_PAUSE
            return
        self.written_checkpoint = max(self.written_checkpoint, checkpoint)
        self._last_write = self.clock()
        self._settled_at_write = settled

    async def _write_parked(self) -> None:
        entries = self.state.take_parking()
        if not entries:
            return
        events = [_system_event(PARKED_TYPE, self._parked_data(p)) for p in entries]
        try:
            result = await self.log.append(parked_stream(self.name), "any", events)
        except BaseException as exc:
            self.state.park_failed(entries)
            if isinstance(exc, Unavailable):
                log.warning("subscription %s: parking not written: %s", self.name, exc.message)
                self._pause_until = self.clock() + RETRY_PAUSE
                return
            raise
        now = time.time_ns() // 1000
        for version, p in zip(range(result.from_version, result.version + 1), entries):
            data = self._parked_data(p)
            self.parked.append(ParkedEntry(version, data["stream"], data["version"], data["position"], data["id"],
                                           data["reason"], data["attempts"], now))
        del self.parked[:max(0, len(self.parked) - PARKED_KEPT)]
        self.state.parked_written(entries)
        self._poke()

    def _parked_data(self, p: Pending) -> dict:
        record: Record = p.event
        return {"incarnation": self.definition.incarnation, "stream": record.stream, "version": record.version,
                "position": record.position, "id": str(uuid.UUID(bytes=record.id)), "reason": p.park_reason,
                "attempts": p.deliveries}

    # replaying parked events -------------------------------------------------------------------
    async def replay(self) -> tuple[int, int]:
        """Deliver every parked event again, outside the main sequence (the checkpoint does not move); the
        entries count as replayed once each replayed event is settled. (replaying, missing)."""
        batch, self.parked = self.parked, []
        missing = 0
        for entry in batch:
            record = await self._resolve(entry)
            if record is None:
                missing += 1
            else:
                self.state.add_replay(entry.parked_version, record.stream, record)
            self.replay_up_to = max(self.replay_up_to, entry.parked_version)
        self._poke()
        return len(batch) - missing, missing

    async def _resolve(self, entry: ParkedEntry) -> Record | None:
        """The parked event itself, if the log still has it."""
        try:
            page = await self.log.read_stream(entry.stream, entry.version, 1, False)
        except (StreamNotFound, StreamDeleted):
            return None
        if page.records and page.records[0].version == entry.version \
                and str(uuid.UUID(bytes=page.records[0].id)) == entry.event_id:
            return page.records[0]
        return None

    async def parked_events(self, limit: int) -> list[tuple[ParkedEntry, Record | None]]:
        return [(entry, await self._resolve(entry)) for entry in self.parked[:limit]]

    async def _finish_replay(self) -> None:
        if not self.replay_up_to or self.state.replays_left:
            return
        up_to = self.replay_up_to
        try:
            await self.log.append(parked_stream(self.name), "any", [_system_event(
                REPLAYED_TYPE, {"upTo": up_to, "incarnation": self.definition.incarnation})])
        except Unavailable as exc:
            log.warning("subscription %s: replay marker not written: %s", self.name, exc.message)
            self._pause_until = self.clock() + RETRY_PAUSE
            return
        if self.replay_up_to == up_to and not self.state.replays_left:
            self.replay_up_to = 0

    # reporting ---------------------------------------------------------------------------------
    def info(self) -> dict:
        state = self.state
        head = self.current_head()
        return {"name": self.name, **self.settings.as_json(), "checkpoint": state.checkpoint,
                "checkpointWritten": self.written_checkpoint, "head": head,
                "lag": max(0, head - state.checkpoint), "inFlight": state.in_flight, "parked": len(self.parked),
                "replaying": state.replays_left, "redeliveries": state.redeliveries,
                "consumers": len(state.consumers),
                "connections": [{"id": c.id, "transport": "websocket" if c.push else "http",
                                 "inFlight": len(c.in_flight)} for c in state.consumers.values()]}


class PersistentSubscriptions:
    """Every persistent subscription of the store, delivered while this node leads (a single node always)."""

    def __init__(self, log_: Log, *, member=None, metrics=None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.log = log_
        self.member = member
        self.metrics = metrics
        self.clock = clock
        self.definitions: dict[str, Definition] = {}
        self.runtimes: dict[str, SubscriptionRuntime] = {}
        self._definitions_version = 0
        self._loaded = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._epoch: int | None = None  # the leader epoch delivery runs under
        self._closing = False

    # following the leader ----------------------------------------------------------------------
    async def start(self) -> None:
        if self.member is None:
            await self._activate()
        else:
            self._task = asyncio.get_running_loop().create_task(self._follow_leadership(),
                                                                name="evstore-persistent-subscriptions")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._deactivate(Closed(CLOSE_GOING_AWAY, "shutting_down", "the node is shutting down"),
                               final_checkpoints=True)

    def _leads(self) -> bool:
        return self.member is None or self.member.role == "leader"

    async def _follow_leadership(self) -> None:
        while True:
            change = asyncio.ensure_future(self.member.next_role_change())  # taken before looking: none missed
            try:
                if self._leads() and self._loaded.is_set() and self._leader_epoch() != self._epoch:
                    # led again under a new epoch without following anyone meanwhile: start from the log again
                    await self._deactivate(Closed(CLOSE_NOT_LEADER, "not_leader", "leadership changed: connect "
                                                  "again", None))
                if self._leads() and not self._loaded.is_set():
                    await self._activate()
                elif not self._leads() and (self._loaded.is_set() or self.runtimes):
                    leader = self.member.leader
                    await self._deactivate(Closed(
                        CLOSE_NOT_LEADER, "not_leader", "this node no longer leads: connect to the leader",
                        {"node": leader.node, "url": leader.url} if leader is not None else None))
                await change
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("persistent subscriptions: taking over failed")
                await asyncio.sleep(RETRY_PAUSE)  # bounded pause, then look at the role again
            finally:
                change.cancel()

    def _leader_epoch(self) -> int | None:
        leader = self.member.leader if self.member is not None else None
        return leader.epoch if leader is not None else None

    async def _activate(self) -> None:
        """Resume every subscription from the log, once everything this node holds is committed (a new
        leader's log may end in entries the old leader had not yet reported committed)."""
        self._epoch = self._leader_epoch()
        target = self.log.head
        while not await self.log.visible.wait_for(target, timeout=RETRY_PAUSE):
            if not self._leads():
                return
        await self._load_definitions()
        for definition in self.definitions.values():
            await self._start_runtime(definition)
        self._loaded.set()
        log.info("persistent subscriptions: delivering %d subscriptions", len(self.runtimes))

    async def _deactivate(self, closed: Closed, *, final_checkpoints: bool = False) -> None:
        self._loaded.clear()
        runtimes, self.runtimes = list(self.runtimes.values()), {}
        for runtime in runtimes:
            await runtime.stop(closed)
        if final_checkpoints:  # together: a shutdown waits FINAL_CHECKPOINT_WAIT at most
            await asyncio.gather(*(runtime.write_final_checkpoint() for runtime in runtimes))

    async def _load_definitions(self) -> None:
        definitions: dict[str, Definition] = {}
        records = await read_whole_stream(self.log, SUBSCRIPTIONS_STREAM)
        for record in records:
            data = orjson.loads(record.data)
            name = data["name"]
            if record.type == CREATED:
                definitions[name] = Definition(name, parse_settings(data["settings"]), data["incarnation"],
                                               data["start"], record.created)
            elif record.type == UPDATED and name in definitions:
                definitions[name].settings = parse_settings(data["settings"])
            elif record.type == DELETED:
                definitions.pop(name, None)
        self.definitions = definitions
        self._definitions_version = records[-1].version if records else 0

    async def _start_runtime(self, definition: Definition, checkpoint: int | None = None) -> SubscriptionRuntime:
        if checkpoint is None:
            checkpoint = await self._load_checkpoint(definition)
        parked, parked_keys = await self._load_parked(definition)
        runtime = SubscriptionRuntime(definition, self.log, checkpoint=checkpoint, parked=parked,
                                      parked_keys=parked_keys, metrics=self.metrics, clock=self.clock)
        self.runtimes[definition.name] = runtime
        runtime.start()
        return runtime

    async def _load_checkpoint(self, definition: Definition) -> int:
        try:
            page = await self.log.read_stream(checkpoint_stream(definition.name), None, 1, True)
        except (StreamNotFound, StreamDeleted):
            return definition.start
        for record in page.records:
            data = orjson.loads(record.data)
            if data.get("incarnation") == definition.incarnation:
                return max(definition.start, int(data["checkpoint"]))
        return definition.start

    async def _load_parked(self, definition: Definition) -> tuple[list[ParkedEntry], frozenset[int]]:
        """The entries still parked (not replayed), and the keys of every event parked (replayed or not)."""
        entries: list[ParkedEntry] = []
        replayed = 0
        for record in await read_whole_stream(self.log, parked_stream(definition.name)):
            data = orjson.loads(record.data)
            if data.get("incarnation") != definition.incarnation:
                continue
            if record.type == PARKED_TYPE:
                entries.append(ParkedEntry(record.version, data["stream"], data["version"], data["position"],
                                           data["id"], data["reason"], data["attempts"], record.created))
            elif record.type == REPLAYED_TYPE:
                replayed = max(replayed, data["upTo"])
        by_stream = definition.settings.stream is not None
        keys = frozenset(e.version if by_stream else e.position for e in entries)
        return [e for e in entries if e.parked_version > replayed], keys

    # serving -----------------------------------------------------------------------------------
    async def ready(self, timeout: float = LOAD_WAIT) -> None:
        """Raise NotLeader unless this node delivers; wait (bounded) while a new leader loads."""
        if self._closing:
            raise Unavailable("the node is shutting down", reason="shutting_down")
        if not self._leads():
            raise NotLeader()
        if self._loaded.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), timeout)
        if not self._leads():
            raise NotLeader()
        if not self._loaded.is_set():
            raise Unavailable("the persistent subscriptions are still loading on the new leader",
                              reason="subscriptions_loading")

    async def runtime(self, name: str) -> SubscriptionRuntime:
        await self.ready()
        runtime = self.runtimes.get(name)
        if runtime is None:
            raise SubscriptionNotFound(f"no subscription named {name!r}", name=name)
        return runtime

    async def list(self) -> list[dict]:
        await self.ready()
        return [self.runtimes[name].info() for name in sorted(self.runtimes)]

    async def create(self, name: str, settings: SubscriptionSettings) -> tuple[bool, dict]:
        """(created, info): an identical definition is confirmed; other settings are a 409."""
        await self.ready()
        async with self._lock:
            existing = self.definitions.get(name)
            if existing is not None:
                if existing.settings == settings:
                    return False, self.runtimes[name].info()
                raise SubscriptionExists(f"subscription {name!r} exists with other settings", name=name)
            if len(self.definitions) >= MAX_SUBSCRIPTIONS:
                raise TooManySubscriptions(f"the store has its limit of {MAX_SUBSCRIPTIONS} persistent "
                                           "subscriptions", limit=MAX_SUBSCRIPTIONS)
            start = await self._resolve_start(settings)
            incarnation = uuid.uuid4().hex
            await self.log.set_metadata(checkpoint_stream(name), {"maxCount": CHECKPOINTS_KEPT})
            await self.log.set_metadata(parked_stream(name), {"maxCount": PARKED_KEPT})
            record_time = await self._append_definition(CREATED, {"name": name, "settings": settings.as_json(),
                                                                  "incarnation": incarnation, "start": start})
            definition = Definition(name, settings, incarnation, start, record_time)
            self.definitions[name] = definition
            runtime = await self._start_runtime(definition, checkpoint=start)
            return True, runtime.info()

    async def update(self, name: str, changes: dict) -> dict:
        """New tunable settings; delivery restarts from the current checkpoint (consumers reconnect)."""
        runtime = await self.runtime(name)
        async with self._lock:
            definition = self.definitions.get(name)
            if definition is None or self.runtimes.get(name) is not runtime:
                raise SubscriptionNotFound(f"no subscription named {name!r}", name=name)
            settings = apply_changes(definition.settings, changes)
            if settings == definition.settings:
                return runtime.info()
            await self._append_definition(UPDATED, {"name": name, "settings": settings.as_json()})
            await runtime.stop(Closed(CLOSE_UPDATED, "subscription_updated",
                                      "the subscription's settings changed: connect again"))
            await runtime.write_final_checkpoint()
            definition.settings = settings
            restarted = await self._start_runtime(definition, checkpoint=runtime.state.checkpoint)
            return restarted.info()

    async def delete(self, name: str) -> None:
        runtime = await self.runtime(name)
        async with self._lock:
            if self.runtimes.get(name) is not runtime:
                raise SubscriptionNotFound(f"no subscription named {name!r}", name=name)
            await self._append_definition(DELETED, {"name": name})
            self.definitions.pop(name, None)
            self.runtimes.pop(name, None)
            await runtime.stop(Closed(CLOSE_DELETED, "subscription_deleted", "the subscription was deleted"))

    async def _resolve_start(self, settings: SubscriptionSettings) -> int:
        if settings.start_from == "start":
            return 0
        if settings.start_from != "end":
            return int(settings.start_from) - 1
        if settings.stream is None:
            return self.log.visible.position
        try:
            return (await self.log.stream_info(settings.stream)).version
        except (StreamNotFound, StreamDeleted):
            return 0

    async def _append_definition(self, event_type: str, data: dict) -> int:
        try:
            result = await self.log.append(SUBSCRIPTIONS_STREAM, self._definitions_version,
                                           [_system_event(event_type, data)])
        except WrongExpectedVersion:
            # an earlier write whose outcome was unknown did land: take the log's word for it
            await self._reload()
            raise Unavailable("the subscription definitions changed meanwhile: retry", reason="retry") from None
        self._definitions_version = result.version
        return time.time_ns() // 1000

    async def _reload(self) -> None:
        await self._load_definitions()
        for name in [n for n in self.runtimes if n not in self.definitions]:
            await self.runtimes.pop(name).stop(Closed(CLOSE_DELETED, "subscription_deleted",
                                                      "the subscription was deleted"))
        for name, definition in self.definitions.items():
            if name not in self.runtimes:
                await self._start_runtime(definition)


__all__ = ["PersistentSubscriptions", "SubscriptionRuntime", "Closed", "Definition", "ParkedEntry",
           "checkpoint_stream", "parked_stream", "SUBSCRIPTIONS_STREAM"]
