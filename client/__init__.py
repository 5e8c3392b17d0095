"""Python client (async and sync) and the `evstore` command line."""
from .async_client import DEFAULT_URL, AsyncEvstoreClient
from .errors import (ConnectionFailed, DuplicateEventId, EvstoreError, Forbidden, InvalidRequest, ReservedStream,
                     ServerError, SnapshotNotFound, StreamDeleted, StreamNotFound, SubscriptionExists,
                     SubscriptionNotFound, TooLarge, TooManyConsumers, Unauthorized, Unavailable,
                     WrongExpectedVersion)
from .protocol import NewEvent
from .sync_client import EvstoreClient

__all__ = [
    "DEFAULT_URL", "AsyncEvstoreClient", "EvstoreClient", "NewEvent",
    "EvstoreError", "InvalidRequest", "ReservedStream", "Unauthorized", "Forbidden", "StreamNotFound",
    "SubscriptionNotFound", "SnapshotNotFound", "WrongExpectedVersion", "DuplicateEventId", "SubscriptionExists",
    "TooManyConsumers", "StreamDeleted", "TooLarge", "Unavailable", "ServerError", "ConnectionFailed",
]
