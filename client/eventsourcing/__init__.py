"""evstore as a persistence module for the `eventsourcing` library (9.5.x):
`PERSISTENCE_MODULE=evstore.eventsourcing`. See factory.py for the settings, recorders.py for how
aggregates, notifications and tracking map onto streams, versions.py for the version mapping."""
from .factory import Factory
from .recorders import (EvstoreAggregateRecorder, EvstoreApplicationRecorder, EvstoreProcessRecorder,
                        EvstoreSubscription, EvstoreTrackingRecorder)
from .snapshots import EvstoreSnapshotRecorder
from .store import Append

__all__ = ["Factory", "Append", "EvstoreAggregateRecorder", "EvstoreApplicationRecorder", "EvstoreProcessRecorder",
           "EvstoreSubscription", "EvstoreTrackingRecorder", "EvstoreSnapshotRecorder"]
