"""Typed errors for evstore HTTP replies, mapped from the JSON `error` code of shared/API.md."""
from __future__ import annotations

from typing import Any

from .protocol import decode_reply


class EvstoreError(Exception):
    """Base of every error the client raises for a server reply (or a failed connection)."""

    def __init__(self, status: int | None, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class InvalidRequest(EvstoreError):
    """400 `invalid_request`; `field` names the offending input when the server says which."""

    @property
    def field(self) -> str | None:
        return self.details.get("field")


class ReservedStream(EvstoreError):
    """400 `reserved_stream`: `$` streams are read-only for clients."""


class Unauthorized(EvstoreError):
    """401: missing or unknown bearer token."""


class Forbidden(EvstoreError):
    """403: the token's role is too low for this operation."""


class NotFound(EvstoreError):
    """Base of the 404 errors."""


class StreamNotFound(NotFound):
    """404 `stream_not_found` (also a soft-deleted stream)."""


class SubscriptionNotFound(NotFound):
    """404 `subscription_not_found`."""


class SnapshotNotFound(NotFound):
    """404 `snapshot_not_found`."""


class Conflict(EvstoreError):
    """Base of the 409 errors."""


class WrongExpectedVersion(Conflict):
    """409 `wrong_expected_version` with the version the caller expected and the stream's current one."""

    @property
    def expected_version(self) -> int | str | None:
        return self.details.get("expectedVersion")

    @property
    def current_version(self) -> int | None:
        return self.details.get("currentVersion")

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Of an append to several streams: every failing stream, {"stream", "expectedVersion",
        "currentVersion"}; of a single append, that one."""
        failures = self.details.get("failures")
        if isinstance(failures, list):
            return failures
        return [{"stream": self.details.get("stream"), "expectedVersion": self.expected_version,
                 "currentVersion": self.current_version}]


class DuplicateEventId(Conflict):
    """409 `duplicate_event_id`: an event id was reused with different content."""


class SubscriptionExists(Conflict):
    """409 `subscription_exists`: same name, different settings."""


class TooManyConsumers(Conflict):
    """409 `too_many_consumers`."""


class StreamDeleted(EvstoreError):
    """410 `stream_deleted`: hard-deleted; the name can never be used again."""


class TooLarge(EvstoreError):
    """413 `too_large`: body or batch over the server's limit."""


class Unavailable(EvstoreError):
    """503 `unavailable` (no leader, no quorum). Safe to retry after `retry_after` seconds."""

    @property
    def retry_after(self) -> float | None:
        value = self.details.get("retryAfter")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class ServerError(EvstoreError):
    """Any reply the contract does not name: unknown code, non-JSON body, a 5xx other than 503."""


class ConnectionFailed(EvstoreError):
    """No HTTP reply at all: connection refused, DNS failure, timeout. `status` is None."""

    def __init__(self, url: str, message: str):
        super().__init__(None, "connection_failed", message, {"url": url})

    @property
    def url(self) -> str:
        return self.details["url"]


ERRORS_BY_CODE: dict[str, type[EvstoreError]] = {
    "invalid_request": InvalidRequest,
    "reserved_stream": ReservedStream,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "stream_not_found": StreamNotFound,
    "subscription_not_found": SubscriptionNotFound,
    "snapshot_not_found": SnapshotNotFound,
    "wrong_expected_version": WrongExpectedVersion,
    "duplicate_event_id": DuplicateEventId,
    "subscription_exists": SubscriptionExists,
    "too_many_consumers": TooManyConsumers,
    "stream_deleted": StreamDeleted,
    "too_large": TooLarge,
    "unavailable": Unavailable,
}


def error_from_reply(status: int, body: Any, text: str = "") -> EvstoreError:
    """The typed error for a non-2xx reply. `body` is the decoded JSON (or None), `text` the raw body."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body["error"]
        message = body.get("message")
        if not isinstance(message, str):
            message = code
        details = {k: v for k, v in body.items() if k not in ("error", "message")}
        cls = ERRORS_BY_CODE.get(code, ServerError)
        return cls(status, code, message, details)
    snippet = " ".join(text.split())[:200] if text else ""
    message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    return ServerError(status, f"http_{status}", message, {})


def error_from_payload(status: int, payload: bytes) -> EvstoreError:
    """The typed error for a non-2xx reply's raw body."""
    return error_from_reply(status, decode_reply(payload), payload.decode("utf-8", "replace"))
