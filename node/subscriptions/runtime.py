"""One persistent subscription while this node delivers it: a reader that follows the log into the delivery
state (delivery.py), consumers' outboxes and fetches, and a maintenance task for ack timeouts, parking,
replays and checkpoints. Only what `log.visible` covers is ever read, so no uncommitted event is delivered.
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

from ..errors import StreamDeleted, StreamNotFound, Unavailable, WrongExpectedVersion
from ..log import AllFilter, Log
from ..position import WatchedPosition, first_reached
from ..storage import Record
from .delivery import Delivery, DeliveryState
from .store import (PARKED_KEPT, Definition, ParkedEntry, checkpoint_event, checkpoint_stream, parked_data,
                    parked_event, parked_stream, replayed_event)

log = logging.getLogger("evstore.subscriptions")

READ_BATCH = 500
RETRY_PAUSE = 1.0  # after a failed read or write of the subscription's own state
HEAD_WAIT = 60.0  # a read-ahead that is full wakes at least this often (the wait is bounded)
HEAD_EVERY = 0.5  # seconds between reads of the head while the read-ahead is full (not one per commit)
FINAL_CHECKPOINT_WAIT = 2.0

# WebSocket close codes sent to consumers (see README "Persistent subscriptions")
CLOSE_DELETED, CLOSE_GOING_AWAY, CLOSE_UPDATED, CLOSE_NOT_LEADER = 1000, 1001, 1012, 4001


@dataclass(slots=True)
class Closed:
    """What a consumer's outbox says last: why it is closed, and where to go."""
    code: int
    reason: str
    message: str
    leader: dict | None = None


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
        # while the read-ahead is full: when the head was last read, and the visible position then
        self._head_read_at = 0.0
        self._head_seen = 0
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
                                                        stream_pattern=f.stream_pattern, include_system=False)
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
            async with asyncio.timeout(FINAL_CHECKPOINT_WAIT):
                await self._write_checkpoint(self.state.checkpoint)

    def _poke(self) -> None:
        """Something changed: hand events to push consumers, wake whoever waits, update the gauges."""
        if self.stopped:
            return
        for consumer_id, batch in self.state.dispatch(self.clock()).items():
            self.outboxes[consumer_id].put_nowait(batch)
        self.changes.advance(self.changes.position + 1)
        if self._gauges is not None:
            _lag, in_flight, parked, consumers, redeliveries = self._gauges
            self._set_lag()
            in_flight.set(self.state.in_flight)
            parked.set(len(self.parked))
            consumers.set(len(self.state.consumers))
            if self.state.redeliveries > self._redeliveries_seen:
                redeliveries.inc(self.state.redeliveries - self._redeliveries_seen)
                self._redeliveries_seen = self.state.redeliveries

    def _set_lag(self) -> None:
        if self._gauges is not None:
            self._gauges[0].set(max(0, self.current_head() - self.state.checkpoint))

    def current_head(self) -> int:
        """The subscription's head: the visible position ($all), or the stream's version as last read."""
        return self.log.visible.position if self._filter is not None else self.head

    async def refresh_head(self) -> None:
        """Read the stream's version (a stream subscription's head) without reading its events."""
        if self._filter is None:
            with contextlib.suppress(StreamNotFound, StreamDeleted):
                self.head = max(self.head, (await self.log.stream_info(self.settings.stream)).version)

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
            if self.state.room <= 0:  # read ahead no further until events settle; the head and lag still move
                await self._follow_head()
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

    async def _follow_head(self) -> None:
        """While the read-ahead is full: wait for a change, or for commits past the head last read, and then read
        the head again (at most every HEAD_EVERY seconds, not once per commit)."""
        visible = self.log.visible
        if visible.position <= self._head_seen:
            await first_reached([(self.changes, self.changes.position + 1), (visible, self._head_seen + 1)],
                                timeout=HEAD_WAIT)
            return
        wait = self._head_read_at + HEAD_EVERY - time.monotonic()
        if wait > 0:
            await self.changes.wait_for(self.changes.position + 1, timeout=wait)
            return
        self._head_seen, self._head_read_at = visible.position, time.monotonic()
        await self._refresh_head_quietly()
        self._set_lag()

    async def _refresh_head_quietly(self) -> None:
        try:
            await self.refresh_head()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("subscription %s: reading the stream's version failed", self.name)
            await asyncio.sleep(RETRY_PAUSE)

    async def _read_once(self, limit: int) -> tuple[bool, int]:
        """Read the next events into the state; (caught up, the visible position the read saw)."""
        state = self.state
        if self._filter is not None:
            page = await self.log.read_all(start=self._cursor, limit=limit, filters=self._filter)
            for record in page.records:
                if not record.stream.startswith("$") and record.position > state.scanned:
                    self._add(record.position, record)
            state.scanned_to(page.next - 1 if page.next is not None else page.head)
            self._cursor = state.scanned + 1
            return page.next is None, page.head
        seen = self.log.visible.position
        try:
            page = await self.log.read_stream(self.settings.stream, start=self._cursor, limit=limit)
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
        """When the checkpoint should be written next (None: not worth a write)."""
        moved = self.state.checkpoint - self.written_checkpoint
        if moved <= 0:
            return None
        settled = self._settled() - self._settled_at_write
        if settled >= self.settings.checkpoint_after_events:
            return self.clock()
        if settled == 0 and moved < self.settings.checkpoint_after_events:
            # only positions nothing matched, such as checkpoint events (this one's own among them): writing
            # for these would move the head again, a write a second for ever on an idle store
            return None
        return self._last_write + self.settings.checkpoint_after_seconds

    async def _write_checkpoint(self, checkpoint: int) -> None:
        """`checkpoint` is the state's at the time of the call: never ahead of an unsettled event."""
        if checkpoint <= self.written_checkpoint:
            return
        settled = self._settled()
        try:
            await self.log.append(checkpoint_stream(self.name), "any",
                                  [checkpoint_event(checkpoint, self.definition.incarnation)])
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
        events = [parked_event(p.event, reason=p.park_reason, attempts=p.deliveries,
                               incarnation=self.definition.incarnation) for p in entries]
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
            data = parked_data(p.event, reason=p.park_reason, attempts=p.deliveries,
                               incarnation=self.definition.incarnation)
            self.parked.append(ParkedEntry(version, data["stream"], data["version"], data["position"], data["id"],
                                           data["reason"], data["attempts"], now))
        del self.parked[:max(0, len(self.parked) - PARKED_KEPT)]
        self.state.parked_written(entries)
        self._poke()

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
            page = await self.log.read_stream(entry.stream, start=entry.version, limit=1)
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
            await self.log.append(parked_stream(self.name), "any",
                                  [replayed_event(up_to, self.definition.incarnation)])
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
