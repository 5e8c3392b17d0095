"""Event ids: UUID version 7 (RFC 9562), time-ordered, so the store's id index grows at one end."""
from __future__ import annotations

import binascii
import os
import time
from random import getrandbits
import uuid

_VERSION_7 = bytes(0x70 | (b & 0x0F) for b in range(256))  # high nibble of byte 6: the version
_VARIANT = bytes(0x80 | (b & 0x3F) for b in range(256))  # top bits of byte 8: the RFC variant


def uuid7_bytes(count: int = 1) -> list[bytes]:
    """`count` version-7 UUIDs as 16-byte strings: 48-bit Unix milliseconds, then 74 random bits.
    Built with whole-buffer operations: appends of thousands of events need thousands of ids."""
    if count == 1:  # the common case (one event per append): integer arithmetic beats the slicing below
        return [_one_uuid7()]
    millis = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw = bytearray(os.urandom(16 * count))
    for i in range(6):
        raw[i::16] = millis[i:i + 1] * count
    raw[6::16] = raw[6::16].translate(_VERSION_7)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    ids = bytes(raw)
    return [ids[offset:offset + 16] for offset in range(0, 16 * count, 16)]


def uuid_texts(ids: list[bytes]) -> list[bytes]:
    """The canonical texts (8-4-4-4-12 lowercase hex) of 16-byte UUIDs, made for the whole list at once: one
    hexlify with a hyphen every 2 bytes, then the three hyphens the canonical form does not have deleted from every
    id in one pass each, which costs a third of making each text by itself."""
    grouped = bytearray(binascii.hexlify(b"".join(ids), b"-", 2))
    grouped += b"-"  # every id in a block of 40: 8 groups of 4 hex digits, each followed by a hyphen
    for block, at in ((40, 34), (39, 29), (38, 4)):  # the last first, so that the earlier places do not move
        del grouped[at::block]
    texts = bytes(grouped)  # blocks of 37: the text and a hyphen
    return [texts[start:start + 36] for start in range(0, 37 * len(ids), 37)]


_RANDOM_A = (1 << 12) - 1
_RANDOM_B = (1 << 62) - 1


def _one_uuid7() -> bytes:
    # ids need uniqueness, not secrecy: the module's generator (seeded from the OS, reseeded in a forked
    # child) saves a getrandom() system call per id, which costs more than the rest under load
    bits = getrandbits(74)
    value = ((time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (bits >> 62 & _RANDOM_A) << 64
             | 0b10 << 62 | bits & _RANDOM_B)
    return value.to_bytes(16, "big")


def uuid7() -> uuid.UUID:
    return uuid.UUID(bytes=uuid7_bytes()[0])
