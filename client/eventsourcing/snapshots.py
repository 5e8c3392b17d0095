"""The snapshot recorder on evstore's snapshots API (`PUT/GET /v1/snapshots/{source}`, `.../all`),
kept in the log as `$snapshot-<source>`: never in an application's notification log, every snapshot
listable. The source is the aggregate's stream name, a snapshot's `version` the aggregate version it
was taken at (used as it is: snapshot versions need not be contiguous), its `type` the snapshot's
topic and its data the stored state, binary."""
from __future__ import annotations

import base64
from typing import Any, Sequence
from uuid import UUID

from eventsourcing.persistence import AggregateRecorder, StoredEvent

from .recorders import EvstoreRecorder


class EvstoreSnapshotRecorder(EvstoreRecorder, AggregateRecorder):
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        for snapshot in stored_events:
            self.store.save_snapshot(self.names.aggregate(snapshot.originator_id),
                                     version=snapshot.originator_version, type=snapshot.topic, data=snapshot.state)
        return None

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None, lte: int | None = None,
                      desc: bool = False, limit: int | None = None) -> list[StoredEvent]:
        source = self.names.aggregate(originator_id)
        if desc and limit == 1 and gt is None:  # the repository's question: the latest at or below a version
            found = self.store.read_snapshot(source, max_version=lte)
            return [] if found is None else [_stored(originator_id, found)]
        found_all = self.store.read_snapshots(source, min_version=None if gt is None else gt + 1, max_version=lte,
                                              backward=desc, limit=limit)
        return [_stored(originator_id, s) for s in found_all]


def _stored(originator_id: UUID | str, snapshot: dict[str, Any]) -> StoredEvent:
    return StoredEvent(originator_id=originator_id, originator_version=snapshot["version"], topic=snapshot["type"],
                       state=base64.b64decode(snapshot["dataBase64"]))
