"""What the recorders need of an evstore node, through the blocking client: stream and `$all` reads,
single and multi-stream appends, snapshots, and live subscriptions. Turns evstore's errors into the
eventsourcing exceptions (PEP 249 names) the library's callers expect."""
from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, ProgrammingError

from evstore.client import (ConnectionFailed, EvstoreClient, EvstoreError, Forbidden, InvalidRequest,
                            SnapshotNotFound, StreamNotFound, Unauthorized, Unavailable, WrongExpectedVersion)
from evstore.client import protocol
from evstore.client.protocol import StreamAppend

MAX_READ_LIMIT = 4096  # the contract's largest page


@dataclass
class Append:
    """One stream's part of an append: its events and the stream version they expect to follow."""

    stream: str
    expected_version: int | str  # a stream version, or one of the contract's words ("any")
    events: list[dict[str, Any]] = field(default_factory=list)

    def expected(self) -> int | str:
        return "no_stream" if self.expected_version == 0 else self.expected_version  # 0: "no stream" in the contract


class VersionConflicts(Exception):
    """An append was refused: `current` maps each failing stream to its current version."""

    def __init__(self, current: Mapping[str, int]):
        super().__init__(f"wrong expected version on {sorted(current)}")
        self.current = dict(current)


def binary_event(type: str, payload: bytes, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An event whose data is raw bytes (eventsourcing's stored state is not JSON in general)."""
    return protocol.event_body({"type": type, "dataBase64": base64.b64encode(payload).decode("ascii"),
                                "metadata": dict(metadata or {})})


def event_bytes(event: Mapping[str, Any]) -> bytes:
    encoded = event.get("dataBase64")
    if encoded is not None:
        return base64.b64decode(encoded)
    raise ProgrammingError(f"event {event.get('id')} of {event.get('stream')!r} has no binary data")


class Store:
    """One node (or cluster) URL and token; thread-safe (requests are sent from the calling thread)."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0,
                 reconnect_timeout: float | None = 60.0) -> None:
        self._client = EvstoreClient(url, token=token, timeout=timeout)
        self._timeout = timeout
        self._reconnect_timeout = reconnect_timeout
        self._gate = threading.Condition()
        self._active = 0
        self._closing = False

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A client call, refused once closing began: a call sent to the client's loop after it stopped
        would wait forever, so close() first lets the calls in flight finish."""
        with self._gate:
            if self._closing:
                raise OperationalError("the evstore persistence module was closed")
            self._active += 1
        try:
            return getattr(self._client, method)(*args, **kwargs)
        finally:
            with self._gate:
                self._active -= 1
                self._gate.notify_all()

    def close(self) -> None:
        with self._gate:
            if self._closing:
                return
            self._closing = True
            self._gate.wait_for(lambda: self._active == 0, timeout=self._timeout)
        self._client.close()

    # -- appends ---------------------------------------------------------------------------

    def append(self, appends: Sequence[Append]) -> list[dict[str, Any]]:
        """All `appends` in one commit; one reply per append ({"stream", "fromVersion", "version",
        "position"}), positions contiguous in request order. VersionConflicts on a failed check."""
        with translated_errors():
            try:
                if len(appends) == 1:
                    only = appends[0]
                    return [self._call("append", only.stream, only.events, expected_version=only.expected())]
                reply = self._call("append_many", [StreamAppend(a.stream, a.events, a.expected()) for a in appends])
                return list(reply["results"])
            except WrongExpectedVersion as exc:
                stream = appends[0].stream
                raise VersionConflicts({f.get("stream") or stream: int(f.get("currentVersion") or 0)
                                        for f in exc.failures}) from None

    # -- reads -----------------------------------------------------------------------------

    def read_stream(self, stream: str, *, from_version: int | None = None, limit: int = MAX_READ_LIMIT,
                    backward: bool = False) -> Iterator[dict[str, Any]]:
        """The stream's events (nothing when it does not exist), page by page."""
        cursor = from_version
        with translated_errors():
            while True:
                try:
                    page = self._call("read_stream", stream, from_version=cursor, limit=limit, backward=backward)
                except StreamNotFound:
                    return
                yield from page["events"]
                cursor = page.get("next")
                if cursor is None or not page["events"]:
                    return

    def last_event(self, stream: str) -> dict[str, Any] | None:
        return next(self.read_stream(stream, limit=1, backward=True), None)

    def first_event(self, stream: str) -> dict[str, Any] | None:
        return next(self.read_stream(stream, from_version=1, limit=1), None)

    def read_all(self, *, from_position: int | None = None, limit: int = MAX_READ_LIMIT, backward: bool = False,
                 types: Sequence[str] = (), stream_prefix: str = "") -> Iterator[dict[str, Any]]:
        """Events of `$all` in order, following `next` (filters may return short pages)."""
        cursor = from_position
        with translated_errors():
            while True:
                page = self._call("read_all", from_position=cursor, limit=limit, backward=backward,
                                  types=list(types) or None, stream_prefix=stream_prefix or None)
                yield from page["events"]
                following = page.get("next")
                if following is None or following == cursor:
                    return
                cursor = following

    # -- snapshots -------------------------------------------------------------------------

    def save_snapshot(self, source: str, *, version: int, type: str, data: bytes) -> None:
        with translated_errors():
            self._call("save_snapshot", source, version=version, type=type, data=data)

    def read_snapshot(self, source: str, *, max_version: int | None) -> dict[str, Any] | None:
        """The latest snapshot at or below `max_version`, or None."""
        with translated_errors():
            try:
                return self._call("read_snapshot", source, max_version=max_version)
            except SnapshotNotFound:
                return None

    def read_snapshots(self, source: str, *, min_version: int | None, max_version: int | None, backward: bool,
                       limit: int | None) -> list[dict[str, Any]]:
        """Snapshots with versions in [min_version, max_version], in version order, at most `limit`."""
        selected: list[dict[str, Any]] = []
        with translated_errors():
            while True:
                page = self._call("read_snapshots", source, min_version=min_version, max_version=max_version,
                                  backward=backward, limit=min(limit, MAX_READ_LIMIT) if limit else None)
                for snapshot in page.get("snapshots", []):
                    selected.append(snapshot)
                    if limit is not None and len(selected) >= limit:
                        return selected
                following = page.get("next")
                if following is None:
                    return selected
                if backward:
                    max_version = following
                else:
                    min_version = following

    # -- live ------------------------------------------------------------------------------

    def subscribe(self, **selector: Any) -> Any:
        """A live subscription that reconnects for at most the store's reconnect timeout; iterate it inside
        translated_errors (giving up is an OperationalError there)."""
        with translated_errors():
            return self._call("subscribe", reconnect_timeout=self._reconnect_timeout, **selector)


class translated_errors:
    """evstore client errors as eventsourcing's PersistenceError family (VersionConflicts passes)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (VersionConflicts, IntegrityError)) or not isinstance(exc, EvstoreError):
            return False
        # as drivers report them: a failed login or a lost server is operational; a token without the role is
        # a missing privilege, which psycopg reports as ProgrammingError (SQLSTATE 42501), not worth a retry
        if isinstance(exc, (ConnectionFailed, Unavailable, Unauthorized)):
            raise OperationalError(str(exc)) from exc
        if isinstance(exc, (InvalidRequest, Forbidden)):
            raise ProgrammingError(str(exc)) from exc
        if exc.code == "duplicate_event_id":
            raise IntegrityError(str(exc)) from exc
        raise InterfaceError(str(exc)) from exc


__all__ = ["Append", "Store", "VersionConflicts", "binary_event", "event_bytes", "MAX_READ_LIMIT"]
