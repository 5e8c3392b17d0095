"""The delivery state of one persistent subscription: no I/O, no clock of its own (callers pass `now`), so
tests drive it step by step.

Events enter in the subscription's order, each with a `key`: its position in `$all` (filter subscriptions)
or its version (stream subscriptions). The checkpoint is the highest key at or below which every event is
settled (acked, skipped, or parked with the park written): it can never pass an event that is ready, in
flight, waiting for a retry or being parked, so resuming after it skips nothing. Replays of parked events
live beside the main sequence and never touch the checkpoint.
"""
from __future__ import annotations

import bisect
import heapq
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from .settings import SubscriptionSettings, TooManyConsumers

READY, IN_FLIGHT, PARKING = "ready", "in_flight", "parking"
MAX_READAHEAD = 10_000  # events read ahead of the checkpoint, at most
DELIVERY_ID = re.compile(r"^(r?)(\d{1,19}):(\d{1,20})$")
NACK_ACTIONS = ("retry", "park", "skip")


@dataclass(slots=True, eq=False)
class Pending:
    key: int  # position or version in the main sequence; the parked stream's version for a replay
    stream: str
    event: Any  # the record, opaque here
    replay: bool = False
    state: str = READY
    failures: int = 0  # nack retry, ack timeout, consumer gone while holding it
    deliveries: int = 0
    consumer: "Consumer | None" = None
    delivery_id: str = ""  # the current (last) delivery's
    serials: list[int] = field(default_factory=list)  # of every delivery of it: an ack names one of them
    park_reason: str = ""


@dataclass(slots=True)
class Delivery:
    delivery_id: str
    attempt: int
    event: Any
    replayed: bool = False


@dataclass(slots=True, eq=False)
class Consumer:
    id: str
    push: bool  # True: the state hands it events (WebSocket); False: it fetches them (HTTP)
    last_seen: float = 0.0
    fetching: int = 0  # fetches under way; a fetching consumer that holds nothing and fetches not is gone
    in_flight: dict[str, Pending] = field(default_factory=dict)


def parse_delivery_id(text: Any) -> tuple[bool, int, int] | None:
    """(replay, key, serial) of a well-formed delivery id, else None."""
    match = DELIVERY_ID.fullmatch(text) if isinstance(text, str) else None
    return (match[1] == "r", int(match[2]), int(match[3])) if match else None


class DeliveryState:
    def __init__(self, settings: SubscriptionSettings, *, checkpoint: int, serial: int = 0) -> None:
        self.settings = settings
        self.partitioned = settings.partition_by == "stream"
        self.readahead = min(MAX_READAHEAD, settings.buffer_size * settings.concurrency_limit)
        self.scanned = checkpoint  # every key up to here was read (or lies before the start)
        self.pending: dict[int, Pending] = {}  # main sequence, in key order (inserted in order)
        self.replays: dict[int, Pending] = {}
        self.consumers: dict[str, Consumer] = {}
        self._ready: list[int] = []  # keys of READY main entries, sorted
        self._ready_replays: list[int] = []
        self._to_park: list[Pending] = []
        self._timeouts: list[tuple[float, int, str, Pending]] = []
        self._owner: dict[str, Consumer] = {}  # partitioned: the consumer a stream's events go to now
        self._owned: dict[str, int] = {}  # and how many of them it holds
        self._rotation: list[str] = []  # push consumers, round robin
        self._next = 0
        self._serial = serial
        self.acked = self.skipped = self.parked = self.redeliveries = 0

    # reading ---------------------------------------------------------------------------------
    @property
    def room(self) -> int:
        """How many more events may be read ahead."""
        return self.readahead - len(self.pending)

    def add(self, key: int, stream: str, event: Any) -> None:
        if key <= self.scanned:
            raise ValueError(f"event {key} is not after {self.scanned}")
        self.pending[key] = Pending(key, stream, event)
        self._ready.append(key)
        self.scanned = key

    def scanned_to(self, key: int) -> None:
        """Everything up to `key` was read (what did not match the filter is settled by definition)."""
        self.scanned = max(self.scanned, key)

    @property
    def checkpoint(self) -> int:
        oldest = next(iter(self.pending), None)
        return self.scanned if oldest is None else min(self.scanned, oldest - 1)

    # replays of parked events ----------------------------------------------------------------
    def add_replay(self, parked_version: int, stream: str, event: Any) -> None:
        if parked_version in self.replays:
            return
        self.replays[parked_version] = Pending(parked_version, stream, event, replay=True)
        bisect.insort(self._ready_replays, parked_version)

    @property
    def replays_left(self) -> int:
        return len(self.replays)

    # consumers -------------------------------------------------------------------------------
    def add_consumer(self, consumer_id: str, *, push: bool, now: float) -> Consumer:
        known = self.consumers.get(consumer_id)
        if known is not None:
            known.last_seen = now
            return known
        if len(self.consumers) >= self.settings.concurrency_limit:
            raise TooManyConsumers(f"the subscription has its limit of {self.settings.concurrency_limit} "
                                   "consumers (concurrencyLimit)", limit=self.settings.concurrency_limit)
        consumer = self.consumers[consumer_id] = Consumer(consumer_id, push, now)
        if push:
            self._rotation.append(consumer_id)
        return consumer

    def begin_fetch(self, consumer_id: str, now: float) -> None:
        """An HTTP consumer counts (against concurrencyLimit) while it fetches or holds events."""
        self.add_consumer(consumer_id, push=False, now=now).fetching += 1

    def end_fetch(self, consumer_id: str) -> None:
        consumer = self.consumers.get(consumer_id)
        if consumer is not None:
            consumer.fetching -= 1
            self._drop_if_idle(consumer)

    def _drop_if_idle(self, consumer: Consumer) -> None:
        if not consumer.push and not consumer.in_flight and consumer.fetching <= 0 \
                and self.consumers.get(consumer.id) is consumer:
            del self.consumers[consumer.id]

    def remove_consumer(self, consumer_id: str) -> None:
        """A consumer left: what it held is retried (it counts as a failure, so a poison event is parked)."""
        consumer = self.consumers.pop(consumer_id, None)
        if consumer is None:
            return
        if consumer_id in self._rotation:
            self._rotation.remove(consumer_id)
        for p in sorted(consumer.in_flight.values(), key=lambda p: (p.replay, p.key)):
            if p.state == IN_FLIGHT and p.consumer is consumer:
                self._fail(p)

    # handing out events ----------------------------------------------------------------------
    def take(self, consumer_id: str, limit: int, now: float) -> list[Delivery]:
        """Up to `limit` events for a (fetching) consumer, within its bufferSize."""
        consumer = self.consumers[consumer_id]
        consumer.last_seen = now
        out = []
        while len(out) < limit and len(consumer.in_flight) < self.settings.buffer_size:
            delivery = self._take_one(consumer, now)
            if delivery is None:
                break
            out.append(delivery)
        return out

    def dispatch(self, now: float) -> dict[str, list[Delivery]]:
        """Hand ready events to the push consumers in turn, one at a time, within their bufferSize."""
        out: dict[str, list[Delivery]] = {}
        rotation = self._rotation
        while (self._ready or self._ready_replays) and rotation:
            progressed = False
            for _ in range(len(rotation)):
                if not (self._ready or self._ready_replays):
                    break  # the turn stays with the next consumer
                self._next %= len(rotation)
                consumer = self.consumers[rotation[self._next]]
                self._next += 1
                if len(consumer.in_flight) >= self.settings.buffer_size:
                    continue
                delivery = self._take_one(consumer, now)
                if delivery is not None:
                    out.setdefault(consumer.id, []).append(delivery)
                    progressed = True
            if not progressed:
                break
        return out

    def _take_one(self, consumer: Consumer, now: float) -> Delivery | None:
        if self._ready_replays:
            return self._send(self.replays[self._ready_replays.pop(0)], consumer, now)
        for i, key in enumerate(self._ready):
            p = self.pending[key]
            if self.partitioned:
                owner = self._owner.get(p.stream)
                if owner is not None and owner is not consumer:
                    continue
            del self._ready[i]
            return self._send(p, consumer, now)
        return None

    def _send(self, p: Pending, consumer: Consumer, now: float) -> Delivery:
        self._serial += 1
        p.deliveries += 1
        p.delivery_id = f"{'r' if p.replay else ''}{p.key}:{self._serial}"
        p.serials.append(self._serial)
        p.state, p.consumer = IN_FLIGHT, consumer
        consumer.in_flight[p.delivery_id] = p
        heapq.heappush(self._timeouts, (now + self.settings.ack_timeout, self._serial, p.delivery_id, p))
        if self.partitioned and not p.replay:
            self._owner[p.stream] = consumer
            self._owned[p.stream] = self._owned.get(p.stream, 0) + 1
        if p.deliveries > 1:
            self.redeliveries += 1
        return Delivery(p.delivery_id, p.deliveries, p.event, p.replay)

    # answers ---------------------------------------------------------------------------------
    def _find(self, delivery_id: str) -> Pending | None:
        """The unsettled event a delivery of which had this id (not a made-up or a stale one)."""
        parsed = parse_delivery_id(delivery_id)
        if parsed is None:
            return None
        replay, key, serial = parsed
        p = (self.replays if replay else self.pending).get(key)
        return p if p is not None and serial in p.serials else None

    def ack(self, ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Settle the events; an ack of an earlier delivery of an event still pending counts too (the consumer
        did process it). Ids of events already settled (or unknown) come back in the second list."""
        acked, unknown = [], []
        for delivery_id in ids:
            p = self._find(delivery_id)
            if p is None or p.state == PARKING:
                unknown.append(delivery_id)
                continue
            self._settle(p)
            self.acked += 1
            acked.append(delivery_id)
        return acked, unknown

    def nack(self, ids: Iterable[str], action: str) -> tuple[list[str], list[str]]:
        """retry (counts as a failure: parked after maxRetries), park, or skip; only for the current delivery."""
        if action not in NACK_ACTIONS:
            raise ValueError(action)
        done, unknown = [], []
        for delivery_id in ids:
            p = self._find(delivery_id)
            if p is None or p.state != IN_FLIGHT or p.delivery_id != delivery_id:
                unknown.append(delivery_id)
                continue
            if action == "retry":
                self._fail(p)
            elif action == "park":
                self._release(p)
                self._park(p, "nack")
            else:
                self._settle(p)
                self.skipped += 1
            done.append(delivery_id)
        return done, unknown

    def expire(self, now: float) -> int:
        """Retry every delivery whose ackTimeout passed; how many."""
        expired = 0
        while self._timeouts and self._timeouts[0][0] <= now:
            _deadline, _serial, delivery_id, p = heapq.heappop(self._timeouts)
            if p.state == IN_FLIGHT and p.delivery_id == delivery_id:
                self._fail(p)
                expired += 1
        return expired

    def next_deadline(self) -> float | None:
        while self._timeouts:
            _deadline, _serial, delivery_id, p = self._timeouts[0]
            if p.state == IN_FLIGHT and p.delivery_id == delivery_id:
                return self._timeouts[0][0]
            heapq.heappop(self._timeouts)
        return None

    # parking ---------------------------------------------------------------------------------
    def take_parking(self) -> list[Pending]:
        """Events to write to the parked stream; each stays pending (holding the checkpoint) until
        `parked_written` (or goes back with `park_failed`)."""
        out, self._to_park = self._to_park, []
        return out

    def parked_written(self, entries: Iterable[Pending]) -> None:
        for p in entries:
            if p.state == PARKING and (self.replays if p.replay else self.pending).get(p.key) is p:
                self._settle(p)
                self.parked += 1

    def park_failed(self, entries: Iterable[Pending]) -> None:
        self._to_park[:0] = [p for p in entries if p.state == PARKING]

    # internals -------------------------------------------------------------------------------
    def _fail(self, p: Pending) -> None:
        consumer = p.consumer
        self._release(p)
        p.failures += 1
        if p.failures > self.settings.max_retries:
            self._park(p, "maxRetries")
            return
        self._make_ready(p)
        if self.partitioned and not p.replay and consumer is not None:
            # the stream's later events that consumer holds go back too, so the stream restarts here, in order
            for q in sorted(consumer.in_flight.values(), key=lambda q: q.key):
                if not q.replay and q.stream == p.stream and q.key > p.key:
                    self._release(q)
                    self._make_ready(q)

    def _park(self, p: Pending, reason: str) -> None:
        p.state, p.park_reason = PARKING, reason
        self._to_park.append(p)

    def _make_ready(self, p: Pending) -> None:
        p.state = READY
        bisect.insort(self._ready_replays if p.replay else self._ready, p.key)

    def _release(self, p: Pending) -> None:
        consumer = p.consumer
        if consumer is None:
            return
        consumer.in_flight.pop(p.delivery_id, None)
        p.consumer = None
        self._drop_if_idle(consumer)
        if self.partitioned and not p.replay:
            left = self._owned[p.stream] - 1
            if left:
                self._owned[p.stream] = left
            else:
                del self._owned[p.stream]
                del self._owner[p.stream]

    def _settle(self, p: Pending) -> None:
        if p.state == IN_FLIGHT:
            self._release(p)
        elif p.state == READY:
            ready = self._ready_replays if p.replay else self._ready
            i = bisect.bisect_left(ready, p.key)
            if i < len(ready) and ready[i] == p.key:
                del ready[i]
        (self.replays if p.replay else self.pending).pop(p.key, None)
        p.state = "settled"

    # stats -----------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return sum(len(c.in_flight) for c in self.consumers.values())
