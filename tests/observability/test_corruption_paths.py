"""Corruption is counted by the path that found it, on real SQLite files: a record damaged on its way from
the leader is refused by the follower and counted with path="replication"; nothing else moves."""
from __future__ import annotations

import uuid

import orjson
import pytest

from evstore.node.cluster.wire import decode_records, encode_records
from evstore.node.errors import CorruptRecord
from evstore.node.log import Log, NewEvent
from evstore.node.metrics import CORRUPTION_PATHS, NodeMetrics
from evstore.node.storage import Storage, records_of_rows, rows_of_records


@pytest.fixture
async def leader_and_follower(tmp_path):
    logs = []
    for name in ("leader", "follower"):
        storage = Storage(tmp_path / name)
        storage.open()
        logs.append(Log(storage, NodeMetrics()))
    yield logs
    for one in logs:
        one.storage.close()


def failures(log: Log) -> dict[str, float]:
    return {path: log.metrics.registry.get_sample_value("evstore_checksum_failures_total", {"path": path})
            for path in CORRUPTION_PATHS}


async def test_a_record_damaged_in_replication_is_counted_on_the_follower(leader_and_follower):
    leader, follower = leader_and_follower
    await leader.append("a", "any", [NewEvent(uuid.uuid4().bytes, "T", orjson.dumps({"n": 1}), b"{}")])
    shipped = decode_records(encode_records(records_of_rows(await leader.rows_from(1))))
    shipped[0].data = b'{"n":666}'
    with pytest.raises(CorruptRecord):
        await follower.apply_replicated_rows(rows_of_records(shipped))
    assert failures(follower) == {"read": 0.0, "replication": 1.0, "verify": 0.0}
    assert failures(leader) == {"read": 0.0, "replication": 0.0, "verify": 0.0}
    assert follower.head == 0  # nothing of the damaged batch was written
