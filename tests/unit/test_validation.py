"""Append bodies parsed as sent: a large body is checked in slices that let the event loop run, with the
same result and the same errors (with their fields) as the one-piece parser."""
from __future__ import annotations

import asyncio
import uuid

import msgspec
import orjson
import pytest

from evstore.node.api import validation as v
from evstore.node.errors import InvalidRequest


def body_of(count: int, *, data: bytes = b'{"p":"' + b"x" * 300 + b'"}', extra: dict[int, bytes] | None = None) -> bytes:
    events = []
    for i in range(count):
        event = b'{"id":"%s","type":"T","data":%s}' % (str(uuid.UUID(int=i + 1)).encode(), data)
        events.append((extra or {}).get(i, event))
    return b'{"expectedVersion":"any","events":[' + b",".join(events) + b"]}"


async def test_a_large_body_is_parsed_in_slices_with_the_same_result():
    body = body_of(5000)
    assert len(body) > 3 * v.SLICE_BYTES
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    sliced = await v.append_body_in_slices(body)
    task.cancel()
    assert ticks > 3, "the parser never let the event loop run"
    whole = v.append_body(body)
    assert sliced[0] == whole[0]
    assert [(e.id, e.type, e.data, e.metadata, e.flags) for e in sliced[1]] == \
        [(e.id, e.type, e.data, e.metadata, e.flags) for e in whole[1]]


@pytest.mark.parametrize("bad, field", [
    (b'{"type":"T","colour":1}', "events[4000].colour"),
    (b'{"type":5}', "events[4000].type"),
    (b'{"type":"T","data":"\xff"}', "events[4000]"),
    (b'{"type":"T","data":1e400}', "events[4000]"),
    (b'{"type":"T","data":' + b"[" * 200 + b"]" * 200 + b"}", "events[4000].data"),
    (b'{"type":"T","metadata":[]}', "events[4000].metadata"),
    (b'"T"', "events[4000]"),
])
async def test_errors_in_a_large_body_name_their_field(bad, field):
    with pytest.raises(InvalidRequest) as caught:
        await v.append_body_in_slices(body_of(5000, extra={4000: bad}))
    assert caught.value.details["field"] == field


def test_ids_checked_together_are_taken_as_one_by_one():
    """event_uuids (an append's client-made ids at once) accepts exactly the lists whose every text event_uuid
    accepts, with the same bytes."""
    import random

    rng = random.Random(11)
    replacements = list("0aF-g ") + ["\t", "\u0660", "\uff10", "\n", "", "00", "--"]
    accepted = refused = 0
    for _ in range(5_000):
        texts = []
        for _i in range(rng.choice((1, 2, 3, 8))):
            text = str(uuid.UUID(int=rng.getrandbits(128)))
            if rng.random() < 0.5:
                text = text.upper()
            if rng.random() < 0.15:
                at = rng.randrange(len(text))
                text = text[:at] + rng.choice(replacements) + text[at + 1:]
            texts.append(text if rng.random() > 0.01 else 7)
        try:
            one_by_one = [v.event_uuid(text, "id") for text in texts]
        except InvalidRequest:
            one_by_one = None
        assert v.event_uuids(texts) == one_by_one, texts
        accepted, refused = accepted + (one_by_one is not None), refused + (one_by_one is None)
    assert accepted > 1000 and refused > 1000


@pytest.mark.parametrize("ids", ["all", "some", "none"])
async def test_a_small_body_is_parsed_as_the_event_by_event_parser_does(ids):
    texts = [str(uuid.uuid4()).upper() if i % 3 == 0 else str(uuid.uuid4()) for i in range(12)]
    events = [{"type": f"T{i}", "data": {"n": i}, **({"metadata": {"m": i}} if i % 2 else {}),
               **({"id": texts[i]} if ids == "all" or (ids == "some" and i % 4) else {})} for i in range(12)]
    body = orjson.dumps({"expectedVersion": 3, "events": events})
    expected, whole = v.append_body(body)
    by_event = await v._events_in_slices([msgspec.Raw(orjson.dumps(e)) for e in events], set(), "")
    assert expected == 3

    def shape(e):
        return (e.id if e.given_id else None, e.given_id, e.id_text, e.type, e.data, e.metadata, e.flags)

    assert [shape(e) for e in whole] == [shape(e) for e in by_event]
    assert [e.id_text for e in whole if e.given_id] == [t.lower().encode() for t, e in zip(texts, events) if "id" in e]
    assert len({e.id for e in whole}) == 12


@pytest.mark.parametrize("events, field", [
    ([{"type": "T", "id": str(uuid.UUID(int=1))}, {"type": 5}, {"type": "T", "id": "nope"}], "events[1].type"),
    ([{"type": "T", "id": str(uuid.UUID(int=1))}, {"type": "T", "id": "nope"}], "events[1].id"),
    ([{"type": "T", "id": str(uuid.UUID(int=1))}, {"type": "T", "id": str(uuid.UUID(int=1)).upper()}], "events[1].id"),
    ([{"type": "T", "id": str(uuid.UUID(int=1))}, {"type": "T"}, {"type": "T", "id": 7}], "events[2].id"),
])
def test_the_first_failing_event_of_a_small_body_is_named(events, field):
    with pytest.raises(InvalidRequest) as caught:
        v.append_body(orjson.dumps({"events": events}))
    assert caught.value.details["field"] == field


def test_event_ids_are_taken_exactly_in_the_canonical_form():
    """event_uuid checks by hyphens and bytes.fromhex instead of UUID_PATTERN: the same strings pass, with their
    bytes (random edits of valid ids: each character replaced by a hex digit, a hyphen, whitespace, a non-ASCII
    digit, or removed or doubled)."""
    import random
    import re

    pattern = re.compile(v.UUID_PATTERN)
    rng = random.Random(7)
    replacements = list("0aF-g ") + ["\t", "\u0660", "\uff10", "\n", "", "00", "--"]
    tried = accepted = 0
    for _ in range(20_000):
        text = str(uuid.UUID(int=rng.getrandbits(128)))
        if rng.random() < 0.5:
            text = text.upper()
        for _edit in range(rng.choice((0, 1, 1, 2))):
            at = rng.randrange(len(text))
            text = text[:at] + rng.choice(replacements) + text[at + 1:]
        tried += 1
        if pattern.fullmatch(text):
            accepted += 1
            assert v.event_uuid(text, "id") == uuid.UUID(text).bytes
        else:
            with pytest.raises(InvalidRequest):
                v.event_uuid(text, "id")
    assert 0.2 * tried < accepted < 0.9 * tried  # both kinds were tried
    for other in (None, 7, ["x"], {"a": 1}, b"0f8fad5b-d9cb-469f-a165-70867728950e"):
        with pytest.raises(InvalidRequest):
            v.event_uuid(other, "id")
