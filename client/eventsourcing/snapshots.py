"""The snapshot recorder on evstore's snapshots API (`PUT/GET /v1/snapshots/{source}`), kept in the
log as `$snapshot-<source>`: never in an application's notification log, every snapshot listable.

The source is the aggregate's stream name; a snapshot's `version` is the aggregate version it was
taken at (originator versions are used as they are: snapshot versions need not be contiguous), its
`type` the snapshot topic, its `data` `{"v": originator version, "state": base64 of the state}`.
"""
from __future__ import annotations

import base64
from typing import Any, Sequence
from uuid import UUID

from eventsourcing.persistence import AggregateRecorder, StoredEvent

from .recorders import EvstoreRecorder
from .store import MAX_READ_LIMIT

SNAPSHOT_STREAM_PREFIX = "$snapshot-"


class EvstoreSnapshotRecorder(EvstoreRecorder, AggregateRecorder):
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        for snapshot in stored_events:
            self.store.save_snapshot(self.names.aggregate(snapshot.originator_id), version=snapshot.originator_version,
                                     type=snapshot.topic, data=_data(snapshot), metadata={})
        return None

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None, lte: int | None = None,
                      desc: bool = False, limit: int | None = None) -> list[StoredEvent]:
        source = self.names.aggregate(originator_id)
        if desc and limit == 1:  # the repository's question: the latest snapshot at or below a version
            found = self.store.read_snapshot(source, max_version=lte)
            snapshots = [] if found is None else [_stored(originator_id, found)]
            return [s for s in snapshots if gt is None or s.originator_version > gt]
        snapshots = [_stored(originator_id, e) for e in self.store.read_stream(SNAPSHOT_STREAM_PREFIX + source,
                                                                                limit=MAX_READ_LIMIT)]
        snapshots.sort(key=lambda s: s.originator_version, reverse=desc)
        selected = [s for s in snapshots if (gt is None or s.originator_version > gt)
                    and (lte is None or s.originator_version <= lte)]
        return selected[:limit] if limit is not None else selected


def _data(snapshot: StoredEvent) -> dict[str, Any]:
    return {"v": snapshot.originator_version, "state": base64.b64encode(snapshot.state).decode("ascii")}


def _stored(originator_id: UUID | str, found: dict[str, Any]) -> StoredEvent:
    """A snapshot as the API returns it, or as an event of its `$snapshot-` stream (which may wrap it)."""
    data = found.get("data")
    topic = found.get("type")
    if isinstance(data, dict) and "state" not in data and isinstance(data.get("data"), dict):
        topic = data.get("type", topic)
        data = data["data"]
    assert isinstance(data, dict) and isinstance(topic, str), found
    return StoredEvent(originator_id=originator_id, originator_version=data["v"], topic=topic,
                       state=base64.b64decode(data["state"]))
