"""Python client (async and sync) and the `evstore` command line."""
from .async_client import DEFAULT_URL, AsyncEvstoreClient
from .consumer import Consumer, Delivery
from .errors import (ConnectionFailed, DuplicateEventId, EvstoreError, Forbidden, InvalidRequest, ReservedStream,
                     ServerError, SnapshotNotFound, StreamDeleted, StreamNotFound, SubscriptionExists,
                     SubscriptionNotFound, TooLarge, TooManyConsumers, Unauthorized, Unavailable,
                     WrongExpectedVersion)
from .protocol import NewEvent, RawJSON, StreamAppend
from .subscription import Subscription
from .sync_client import EvstoreClient, SyncConsumer, SyncDelivery, SyncSubscription

__all__ = [
    "DEFAULT_URL", "AsyncEvstoreClient", "EvstoreClient", "NewEvent", "RawJSON", "StreamAppend",
    "Subscription", "Consumer", "Delivery", "SyncSubscription", "SyncConsumer", "SyncDelivery",
    "EvstoreError", "InvalidRequest", "ReservedStream", "Unauthorized", "Forbidden", "StreamNotFound",
    "SubscriptionNotFound", "SnapshotNotFound", "WrongExpectedVersion", "DuplicateEventId", "SubscriptionExists",
    "TooManyConsumers", "StreamDeleted", "TooLarge", "Unavailable", "ServerError", "ConnectionFailed",
]
