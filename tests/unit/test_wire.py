"""The replication wire format: JSON-only batches in the previous release's format 1 (so old and new nodes replicate
from each other during a rolling upgrade), batches with binary payloads in format 2 behind a magic, and the stored
rows themselves in format 3 for followers that ask for it; every format decodes to stored rows."""
from __future__ import annotations

import struct
import uuid

import pytest

from evstore.node.cluster.wire import MAGIC, ROWS_MAGIC, WireError, decode, decode_records, encode, encode_records
from evstore.node.errors import CorruptRecord
from evstore.node.storage import DATA_BINARY, METADATA_BINARY, Record, records_of_rows, rows_of_records, verify_rows

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


def test_format_3_carries_the_stored_rows_as_they_are():
    records = [record(1), record(2, DATA_BINARY), record(3, DATA_BINARY | METADATA_BINARY)]
    rows = rows_of_records(records)
    payload = encode(rows, as_rows=True)
    assert payload.startswith(ROWS_MAGIC)
    assert decode(payload) == rows  # every value: reply texts, their CRCs and spans too
    assert records_of_rows(decode(payload)) == records
    verify_rows(decode(payload))
    assert encode([], as_rows=True) == ROWS_MAGIC and decode(ROWS_MAGIC) == [] and decode(b"") == []


def test_followers_that_do_not_ask_for_rows_get_formats_1_and_2():
    plain, mixed = [record(1), record(2)], [record(3), record(4, DATA_BINARY)]
    assert encode(rows_of_records(plain), as_rows=False) == encode_records(plain)
    assert encode(rows_of_records(mixed), as_rows=False) == encode_records(mixed)
    assert decode(encode_records(mixed)) == rows_of_records(mixed)


def test_malformed_format_3_payloads_are_refused():
    payload = encode(rows_of_records([record(1), record(2)]), as_rows=True)
    for cut in (payload[:-1], payload[:len(ROWS_MAGIC) + 5]):
        with pytest.raises(WireError):
            decode(cut)


@pytest.mark.parametrize("flip", ["text", "data", "checksum"])
def test_a_row_that_differs_from_what_the_leader_sealed_is_found(flip):
    rows = decode(encode(rows_of_records([record(1), record(2, DATA_BINARY)]), as_rows=True))
    at = {"text": 3, "data": 17 + 10, "checksum": 2}[flip]  # storage.STORED_COLUMNS: json, data, checksum
    if flip == "checksum":
        rows[at] ^= 1
    else:
        rows[at][-2] ^= 0x20
    with pytest.raises(CorruptRecord) as found:
        verify_rows(rows)
    assert f"position {2 if flip == 'data' else 1} " in str(found.value)


@pytest.mark.parametrize("edit", [
    (b'"version":1,', b'"version":7,'), (b'"position":1,', b'"position":9,'), (b'"order-1"', b'"order-2"'),
    (b',"type":"T"', b',"type":"U"'), (b'"created":"2023', b'"created":"2024')])
def test_a_text_that_disagrees_with_its_record_is_found_though_its_crc_matches(edit):
    import crc32c

    rows = decode(encode(rows_of_records([record(1)]), as_rows=True))
    old, new = edit
    assert old in rows[3]
    rows[3] = bytearray(bytes(rows[3]).replace(old, new, 1))
    rows[4] = crc32c.crc32c(rows[3])  # the text's own CRC agrees: only the record can tell
    with pytest.raises(CorruptRecord):
        verify_rows(rows)


def test_unknown_content_type_flags_are_corrupt_not_a_crash():
    rows = decode(encode(rows_of_records([record(1)]), as_rows=True))
    rows[12] = 4  # storage.STORED_COLUMNS: flags
    with pytest.raises(CorruptRecord):
        verify_rows(rows)
