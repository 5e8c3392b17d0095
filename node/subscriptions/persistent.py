"""Persistent subscriptions: server-side, at-least-once, acked, on the leader only ("follow the leader").

Definitions, checkpoints and parked events live in the log (store.py). Delivery runs where the node leads:
on becoming leader the service waits until everything the node holds is committed, loads the definitions,
checkpoints and parked entries, and resumes each subscription (runtime.py); on losing leadership it stops
them and closes their consumers.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Callable

from ..errors import NotLeader, StreamDeleted, StreamNotFound, Unavailable, WrongExpectedVersion
from ..log import Log
from .runtime import (CLOSE_DELETED, CLOSE_GOING_AWAY, CLOSE_NOT_LEADER, CLOSE_UPDATED, RETRY_PAUSE, Closed,
                      SubscriptionRuntime)
from .settings import (MAX_SUBSCRIPTIONS, SubscriptionExists, SubscriptionNotFound, SubscriptionSettings,
                       TooManySubscriptions, apply_changes)
from .store import (CHECKPOINTS_KEPT, CREATED, DELETED, PARKED_KEPT, SUBSCRIPTIONS_STREAM, UPDATED, Definition,
                    checkpoint_stream, load_checkpoint, load_definitions, load_parked, parked_stream, system_event)

log = logging.getLogger("evstore.subscriptions")

LOAD_WAIT = 5.0  # how long a request waits for a new leader to load its subscriptions before a 503


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
        self.definitions, self._definitions_version = await load_definitions(self.log)

    async def _start_runtime(self, definition: Definition, checkpoint: int | None = None) -> SubscriptionRuntime:
        if checkpoint is None:
            checkpoint = await load_checkpoint(self.log, definition)
        parked, parked_keys = await load_parked(self.log, definition)
        runtime = SubscriptionRuntime(definition, self.log, checkpoint=checkpoint, parked=parked,
                                      parked_keys=parked_keys, metrics=self.metrics, clock=self.clock)
        self.runtimes[definition.name] = runtime
        await runtime.refresh_head()  # a new subscription's first info says where the stream is
        runtime.start()
        return runtime

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
            async with asyncio.timeout(timeout):
                await self._loaded.wait()
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
            if settings.stream is not None:  # nothing could ever be delivered (its lag would never clear)
                await self.log.refuse_hard_deleted(settings.stream)
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
                                           [system_event(event_type, data)])
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
