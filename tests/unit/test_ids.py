"""Event ids the node and the client make up: valid, unique, time-ordered UUIDv7."""
from __future__ import annotations

import time
import uuid

from evstore.ids import uuid7, uuid7_bytes


def test_uuid7_fields():
    before = time.time_ns() // 1_000_000
    ids = uuid7_bytes(500)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 500 and all(len(i) == 16 for i in ids)
    for raw in ids:
        value = uuid.UUID(bytes=raw)
        assert value.version == 7 and value.variant == uuid.RFC_4122
        assert before <= int.from_bytes(raw[:6], "big") <= after


def test_single_uuid7_fields():
    before = time.time_ns() // 1_000_000
    ids = [uuid7_bytes(1)[0] for _ in range(500)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 500
    for raw in ids:
        value = uuid.UUID(bytes=raw)
        assert len(raw) == 16 and value.version == 7 and value.variant == uuid.RFC_4122
        assert before <= int.from_bytes(raw[:6], "big") <= after


def test_uuid7_are_time_ordered_across_calls():
    first = uuid7()
    time.sleep(0.002)  # the ids must differ in their millisecond field, which needs a millisecond to pass
    second = uuid7()
    assert first.bytes[:6] < second.bytes[:6]


def test_uuid_texts_are_the_canonical_texts():
    from evstore.ids import uuid_texts
    for count in (1, 2, 3, 17, 100):
        ids = [uuid.uuid4().bytes for _ in range(count)] + uuid7_bytes(count)
        assert uuid_texts(ids) == [str(uuid.UUID(bytes=raw)).encode() for raw in ids]
