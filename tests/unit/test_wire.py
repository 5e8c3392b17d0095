"""The replication wire format: JSON-only batches in the previous release's format 1 (so old and new nodes replicate
from each other during a rolling upgrade), batches with binary payloads in format 2 behind a magic."""
from __future__ import annotations

import struct
import uuid

import pytest

from evstore.node.cluster.wire import MAGIC, WireError, decode_records, encode_records
from evstore.node.storage import DATA_BINARY, Record

FORMAT_1_HEADER = struct.Struct("<QQqqIHHII16s")  # what the previous release packs and unpacks


def record(position: int, flags: int = 0) -> Record:
    data = b"\x00\x01raw" if flags else b'{"n":18446744073709551617}'
    r = Record(position, "order-1", position, uuid.uuid4().bytes, "T", data, b"{}", 1_700_000_000_000_000, 3,
               flags=flags)
    r.checksum = r.compute_checksum()
    return r


def decode_format_1(payload: bytes) -> list[tuple]:
    """The previous release's decoder, reduced to what it checks."""
    out, offset = [], 0
    while offset < len(payload):
        fields = FORMAT_1_HEADER.unpack_from(payload, offset)
        offset += FORMAT_1_HEADER.size + sum(fields[5:9])
        out.append((fields[0], fields[4]))
    return out


def test_json_batches_travel_in_the_previous_format_and_binary_ones_tagged():
    plain = [record(1), record(2)]
    payload = encode_records(plain)
    assert not payload.startswith(MAGIC)
    assert decode_format_1(payload) == [(1, plain[0].checksum), (2, plain[1].checksum)]
    assert decode_records(payload) == plain
    mixed = [record(3), record(4, DATA_BINARY)]
    tagged = encode_records(mixed)
    assert tagged.startswith(MAGIC) and decode_records(tagged) == mixed
    assert encode_records([]) == b"" and decode_records(b"") == []


def test_no_format_1_payload_reads_as_tagged():
    # a position whose low bytes spell the magic's first four is still an ordinary format-1 payload
    position = int.from_bytes(MAGIC[:4], "little")
    payload = encode_records([record(position)])
    assert payload[:4] == MAGIC[:4] and not payload.startswith(MAGIC)
    assert [r.position for r in decode_records(payload)] == [position]
    assert int.from_bytes(MAGIC, "little") >= 2**63  # never a position


def test_malformed_payloads_are_refused():
    with pytest.raises(WireError):
        decode_records(b"\x01\x02\x03")
    with pytest.raises(WireError):
        decode_records(encode_records([record(1, DATA_BINARY)])[:-3])
