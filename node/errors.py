"""Errors of the log layer. The api layer maps each to one HTTP status and error code."""
from __future__ import annotations


class LogError(Exception):
    status = 500
    code = "internal"
    observed_position: int | None = None  # set by the writer: the head the refused write operation saw

    def __init__(self, message: str, **details) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(LogError):
    status, code = 400, "invalid_request"


class ReservedStream(LogError):
    status, code = 400, "reserved_stream"


class StreamNotFound(LogError):
    status, code = 404, "stream_not_found"


class SnapshotNotFound(LogError):
    status, code = 404, "snapshot_not_found"


class WrongExpectedVersion(LogError):
    status, code = 409, "wrong_expected_version"


class DuplicateEventId(LogError):
    status, code = 409, "duplicate_event_id"


class StreamDeleted(LogError):
    status, code = 410, "stream_deleted"


class Unavailable(LogError):
    status, code = 503, "unavailable"

    def __init__(self, message: str, retry_after: float = 1.0, **details) -> None:
        super().__init__(message, retryAfter=retry_after, **details)


class CorruptRecord(Unavailable):
    """A record whose checksum does not verify: the node cannot serve it (another replica may)."""

    def __init__(self, position: int) -> None:
        super().__init__(f"record at position {position} failed its checksum", retry_after=0,
                         reason="checksum_mismatch", position=position)


class NotLeader(Unavailable):
    """This node cannot write: it is not the leader (or stopped being it before the write started).
    Nothing was written, so the request may be sent to the leader."""

    def __init__(self, message: str = "this node is not the leader", **details) -> None:
        super().__init__(message, reason="not_leader", **details)
