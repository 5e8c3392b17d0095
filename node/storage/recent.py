"""The latest group commits in memory, for replication to ship without reading them back (RecentCommits), and
the same read from SQLite when they are not there (rows_from_store)."""
from __future__ import annotations

import sqlite3
import threading
from collections import deque
from typing import Sequence

from .records import AT_CREATED, AT_DATA, AT_METADATA, AT_POSITION, AT_STREAM, AT_TEXT, ROW_WIDTH, STORED_COLUMNS

RECENT_COMMITS_BYTES = 8 << 20
RECENT_COMMITS_MAX = 4096


def shipped_bytes(values: list, offset: int = 0) -> int:
    """What the flat records from `offset` count against a replication budget (as Log.rows_from counts)."""
    return sum(row_bytes(values, i) for i in range(offset, len(values), ROW_WIDTH))


def row_bytes(values: Sequence, i: int) -> int:
    """About what the stored row at `values[i:]` takes in a fetch reply of wire format 3 (its text, binary
    payloads, stream and fixed fields)."""
    return (len(values[i + AT_TEXT]) + len(values[i + AT_DATA]) + len(values[i + AT_METADATA])
            + len(values[i + AT_STREAM]) + 64)


class RecentCommits:
    """The records of the latest group commits, kept in memory as the writer wrote them, so that replication
    ships a follower its next entries without reading them back from SQLite (at the tail, where caught-up
    followers fetch, a read back cost the leader a reader-thread round trip per fetch, on the critical path of
    every acknowledgement). Whole commits, contiguous up to the head; the writer empties it whenever SQL of its
    own removed, inserted or rolled back records (scavenges, trims, truncation, replicated inserts).
    Kept only while switched on (by a leader: nothing else ships its log)."""

    def __init__(self, *, max_bytes: int = RECENT_COMMITS_BYTES, max_commits: int = RECENT_COMMITS_MAX,
                 on: bool = False) -> None:
        self.on = on
        self.max_bytes = max_bytes
        self.max_commits = max_commits
        self._commits: deque[tuple[int, int, list, int]] = deque()  # (first, last position, values, bytes)
        self._bytes = 0
        self._lock = threading.Lock()  # the writer thread adds, the event loop reads

    def clear(self) -> None:
        with self._lock:
            self._commits.clear()
            self._bytes = 0

    def keep(self, on: bool) -> None:
        """Start (True) or stop keeping commits; either way it starts empty."""
        self.on = on
        self.clear()

    def add(self, flushed: list[list], last_position: int) -> None:
        """One commit's records (flat values, ROW_WIDTH per record, in position order) ending at `last_position`."""
        if not self.on:
            return
        values = flushed[0] if len(flushed) == 1 else [v for part in flushed for v in part]
        first = values[AT_POSITION]
        if values[AT_POSITION - ROW_WIDTH] != last_position or (last_position - first + 1) * ROW_WIDTH != len(values):
            self.clear()  # not one contiguous run ending at the head: keep nothing rather than a hole
            return
        size = shipped_bytes(values)
        with self._lock:
            if self._commits and self._commits[-1][1] + 1 != first:
                self._commits.clear()
                self._bytes = 0
            self._commits.append((first, last_position, values, size))
            self._bytes += size
            while len(self._commits) > 1 and (self._bytes > self.max_bytes or len(self._commits) > self.max_commits):
                self._bytes -= self._commits.popleft()[3]

    def rows_from(self, first: int, max_bytes: int) -> list | None:
        """As Log.rows_from: the stored rows (flat values) from `first` to the end of its commit, then whole
        commits while fewer than `max_bytes` were taken; None when `first` is not in memory (read the store)."""
        with self._lock:
            commits = self._commits
            if not commits or not commits[0][0] <= first <= commits[-1][1]:
                return None
            index = len(commits) - 1
            while commits[index][0] > first:
                index -= 1
            rows: list = []
            size = 0
            for k in range(index, len(commits)):
                start, _last, values, commit_bytes = commits[k]
                if rows and size >= max_bytes:
                    break
                offset = (first - start) * ROW_WIDTH if k == index else 0
                rows += values[offset:] if offset else values
                size += shipped_bytes(values, offset) if offset else commit_bytes
        return rows


def rows_from_store(conn: sqlite3.Connection, first: int, max_bytes: int) -> list:
    """Log.rows_from, read from SQLite: whole commits (a commit's records share `created`)."""
    rows: list = []
    size = 0
    last_created = None
    for row in conn.execute(f"SELECT {STORED_COLUMNS} FROM events WHERE position >= ? ORDER BY position", (first,)):
        if size >= max_bytes and row[AT_CREATED] != last_created:
            break
        rows += row
        last_created = row[AT_CREATED]
        size += row_bytes(row, 0)
    return rows
