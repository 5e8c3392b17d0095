"""The infrastructure factory: `PERSISTENCE_MODULE=evstore.eventsourcing`.

Settings, read from the environment like eventsourcing's own modules (so each may be given per
application as `<APPLICATION NAME>_<SETTING>`):

- `EVSTORE_URL` (default http://127.0.0.1:7113) and `EVSTORE_TOKEN`: as for the evstore CLI;
- `EVSTORE_STREAM_PREFIX`: prepended to every stream this application writes; defaults to
  `<application name>-` for a named application (so applications sharing a store keep apart
  notification logs; a `-` or `%` in the name is written `%2D` or `%25`, so that no application's
  prefix begins another's streams) and to nothing otherwise;
- `EVSTORE_TIMEOUT`: seconds per request (default 30);
- `EVSTORE_RECONNECT_TIMEOUT`: seconds a live `subscribe()` goes on reconnecting to a node that is gone
  before its iterator raises OperationalError (default 60; `none`: for ever);
- `ORIGINATOR_ID_TYPE`: `uuid` (default) or `text`, as in the SQLite and PostgreSQL modules.
"""
from __future__ import annotations

import math

from eventsourcing.persistence import AggregateRecorder, ApplicationRecorder, InfrastructureFactory, ProcessRecorder
from eventsourcing.utils import Environment, EnvType, resolve_topic

from evstore.client import DEFAULT_URL, protocol

from .recorders import (EvstoreAggregateRecorder, EvstoreApplicationRecorder, EvstoreProcessRecorder,
                        EvstoreTrackingRecorder, StreamNames)
from .snapshots import EvstoreSnapshotRecorder
from .store import Store


def default_prefix(application_name: str) -> str:
    """`<application name>-`, with any `-` (and `%`) in the name percent-encoded: no application's prefix then
    starts another's streams (`Orders-` would match the streams of an application named `Orders-EU`)."""
    if not application_name:
        return ""
    return application_name.replace("%", "%25").replace("-", "%2D") + "-"


class Factory(InfrastructureFactory[EvstoreTrackingRecorder]):
    EVSTORE_URL = "EVSTORE_URL"
    EVSTORE_TOKEN = "EVSTORE_TOKEN"
    EVSTORE_STREAM_PREFIX = "EVSTORE_STREAM_PREFIX"
    EVSTORE_TIMEOUT = "EVSTORE_TIMEOUT"
    EVSTORE_RECONNECT_TIMEOUT = "EVSTORE_RECONNECT_TIMEOUT"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"

    aggregate_recorder_class = EvstoreAggregateRecorder
    snapshot_recorder_class = EvstoreSnapshotRecorder
    application_recorder_class = EvstoreApplicationRecorder
    tracking_recorder_class = EvstoreTrackingRecorder
    process_recorder_class = EvstoreProcessRecorder

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        timeout = self._seconds(self.EVSTORE_TIMEOUT, "30", zero=False)
        url = self.env.get(self.EVSTORE_URL) or DEFAULT_URL
        try:
            protocol.check_node_url(url)
        except ValueError as exc:
            raise OSError(f"{self.EVSTORE_URL}: {exc}") from None
        id_type = (self.env.get(self.ORIGINATOR_ID_TYPE) or "uuid").lower()
        if id_type not in ("uuid", "text"):
            raise OSError(f"Invalid {self.ORIGINATOR_ID_TYPE} {id_type!r}, must be 'uuid' or 'text'")
        prefix = self.env.get(self.EVSTORE_STREAM_PREFIX)
        if prefix is None:
            prefix = default_prefix(self.env.name)
        if prefix.startswith("$"):
            raise OSError(f"{self.EVSTORE_STREAM_PREFIX} must not start with $ (system streams)")
        self.names = StreamNames(prefix, originator_id_type=id_type)
        reconnect_timeout = self._seconds(self.EVSTORE_RECONNECT_TIMEOUT, "60", zero=True, none=True)
        self.store = Store(url, token=self.env.get(self.EVSTORE_TOKEN), timeout=timeout,
                           reconnect_timeout=reconnect_timeout)

    def _seconds(self, name: str, default: str, *, zero: bool, none: bool = False) -> float | None:
        """A setting in seconds: finite, above 0 (or also 0), or `none` (None) where that is allowed."""
        text = self.env.get(name) or default
        if none and text.strip().lower() == "none":
            return None
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not (0 <= seconds if zero else 0 < seconds) or seconds == math.inf:
            allowed = (">= 0" if zero else "above 0") + (" or 'none'" if none else "")
            raise OSError(f"{name} must be a number of seconds {allowed}, not {text!r}")
        return seconds

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        if purpose == "snapshots":
            return self.snapshot_recorder_class(self.store, self.names)
        return self.aggregate_recorder_class(self.store, self.names)

    def application_recorder(self) -> ApplicationRecorder:
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        cls = resolve_topic(topic) if topic else self.application_recorder_class
        return cls(self.store, self.names)

    def tracking_recorder(self, tracking_recorder_class: type[EvstoreTrackingRecorder] | None = None
                          ) -> EvstoreTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = resolve_topic(topic) if topic else self.tracking_recorder_class
        assert tracking_recorder_class is not None
        if not issubclass(tracking_recorder_class, EvstoreTrackingRecorder):
            raise TypeError(f"{tracking_recorder_class} is not an evstore tracking recorder")
        return tracking_recorder_class(self.store, self.names)

    def process_recorder(self) -> ProcessRecorder:
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        cls = resolve_topic(topic) if topic else self.process_recorder_class
        return cls(self.store, self.names)

    def close(self) -> None:
        self.store.close()


__all__ = ["Factory"]
