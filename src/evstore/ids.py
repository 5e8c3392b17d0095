"""Event ids: UUID version 7 (RFC 9562), time-ordered, so the store's id index grows at one end."""
from __future__ import annotations

import os
import time
import uuid


def uuid7_bytes(count: int = 1) -> list[bytes]:
    """`count` version-7 UUIDs as 16-byte strings: 48-bit Unix milliseconds, then 74 random bits."""
    millis = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw = os.urandom(10 * count)
    ids = []
    for offset in range(0, 10 * count, 10):
        r = raw[offset:offset + 10]
        ids.append(millis + bytes((0x70 | (r[0] & 0x0F), r[1], 0x80 | (r[2] & 0x3F))) + r[3:])
    return ids


def uuid7() -> uuid.UUID:
    return uuid.UUID(bytes=uuid7_bytes()[0])
