"""Read-ahead for sequential readers (a catch-up, a projection, an export): when a forward page ends with
`next`, the page after it is read on an idle reader thread while the client takes in the one it has. The
request for that page then takes it from here, but only after a read transaction of its own has checked that
a fresh read would return exactly the same page (`PageBasis.still_holds`); otherwise it reads afresh.

Every page kept here is bounded: at most MAX_PAGES of them (MAX_UNDER_WAY being read at once), each at most
MAX_PAGE_BYTES of reply, each for at most KEEP_SECONDS. A page is read ahead only while no request's read is
under way, so under concurrent load the readers do no work that might go unused (and the event loop no
bookkeeping for it).
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

MAX_PAGES = 16
MAX_UNDER_WAY = 2  # pages being read at once: a request's read queues behind no more than these
MAX_PAGE_BYTES = 1 << 20
KEEP_SECONDS = 2.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PageBasis:
    """What a page was read under, to decide later, in another read transaction, whether it still holds.

    `removals`: the log's count of transactions that removed records (scavenge, trim, truncation), which is the
    only way records at or below a read's head change. `head`: a `$all` page's head, or a stream's version. `full`:
    the page stopped at its limit or byte budget below that head, so a later head leaves its events and `next` as
    they are. `state`: what else decides the page (a stream's metadata, delete state and first visible version)."""
    removals: int
    head: int
    full: bool
    state: tuple = ()

    def still_holds(self, now: PageBasis) -> bool:
        if self.removals != now.removals or self.state != now.state:
            return False
        return now.head == self.head or (self.full and now.head > self.head)


@dataclass(slots=True)
class AheadPage(Generic[T]):
    page: T  # the slice a read returned
    basis: PageBasis | None  # None: the page is not to be read ahead or kept
    size: int  # its bytes of reply


class ReadAhead(Generic[T]):
    """Pages read ahead, by the request that will ask for them (a hashable key)."""

    def __init__(self, *, max_pages: int = MAX_PAGES, max_under_way: int = MAX_UNDER_WAY,
                 keep_seconds: float = KEEP_SECONDS) -> None:
        self.max_pages = max_pages
        self.max_under_way = max_under_way
        self.keep_seconds = keep_seconds
        self._pending: OrderedDict[Hashable, tuple[float, asyncio.Task]] = OrderedDict()
        self.used = 0  # pages taken that still held
        self.stale = 0  # pages taken that no longer held (read afresh)

    def start(self, key: Hashable, read: Callable[[], Awaitable[AheadPage[T] | None]]) -> None:
        """Read the page `key` asks for in the background, unless already under way or MAX_PAGES are kept (a
        page read and then dropped unused is work for nothing)."""
        self._drop_expired()
        if key in self._pending or len(self._pending) >= self.max_pages or self.under_way >= self.max_under_way:
            return
        self._pending[key] = (time.monotonic() + self.keep_seconds, asyncio.ensure_future(_kept(read)))
        asyncio.get_running_loop().call_later(self.keep_seconds, self._drop_expired)

    async def take(self, key: Hashable) -> AheadPage[T] | None:
        """The page read ahead for `key` (waiting for it if under way), once; None when there is none."""
        self._drop_expired()
        entry = self._pending.pop(key, None)
        if entry is None:
            return None
        return await entry[1]

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def under_way(self) -> int:
        """Pages still being read (they queue for the reader threads like requests' reads)."""
        return sum(1 for _, task in self._pending.values() if not task.done())

    def judged(self, held: bool) -> None:
        if held:
            self.used += 1
        else:
            self.stale += 1

    def clear(self) -> None:
        for _, task in self._pending.values():
            task.cancel()
        self._pending.clear()

    def _drop_expired(self) -> None:
        now = time.monotonic()
        while self._pending:
            key, (deadline, task) = next(iter(self._pending.items()))
            if deadline > now:
                return
            del self._pending[key]
            task.cancel()


async def _kept(read: Callable[[], Awaitable[AheadPage[T] | None]]) -> AheadPage[T] | None:
    """The page, if it is small enough to keep. A read ahead that fails is as if it had not been made: the
    request reads afresh, and reports its error."""
    try:
        page = await read()
    except asyncio.CancelledError:
        raise
    except Exception:
        return None
    return page if page is not None and page.basis is not None and page.size <= MAX_PAGE_BYTES else None
