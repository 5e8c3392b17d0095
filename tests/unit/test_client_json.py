"""The client's request JSON: what it is given goes out exactly (integers of any size, RawJSON texts as they
are), and what JSON cannot say is refused rather than changed (orjson writes NaN as null)."""
from __future__ import annotations

import json
import math

import pytest

from evstore.client.protocol import RawJSON, dumps, loads_exact


def test_plain_values_go_through_orjson_compactly():
    assert dumps({"a": [1, 2.5, None, "é"], "b": True}) == '{"a":[1,2.5,null,"é"],"b":true}'.encode()


def test_integers_beyond_64_bits_are_sent_exactly():
    big = 123456789012345678901234567890
    out = dumps({"events": [{"data": {"n": big, "m": -big, "s": "x"}}], "v": 1})
    assert json.loads(out) == {"events": [{"data": {"n": big, "m": -big, "s": "x"}}], "v": 1}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("big", [False, True], ids=["orjson", "stdlib"])
def test_nan_and_infinities_are_refused_not_sent_as_null(bad, big):
    value = {"data": [None, {"x": bad}], "n": 10**30 if big else 1}
    with pytest.raises(ValueError):
        dumps(value)


@pytest.mark.parametrize("big", [False, True], ids=["orjson", "stdlib"])
def test_raw_json_text_goes_out_as_it_is(big):
    text = '{"d": 0.1000000000000000000001, "e": 1E2, "n": 1e400}'
    out = dumps({"data": RawJSON(text), "metadata": RawJSON("{}"), "v": 10**30 if big else 1})
    assert out.startswith(b'{"data":' + text.encode() + b',"metadata":{},"v":')


def test_an_unpaired_surrogate_goes_escaped_for_the_server_to_refuse():
    assert dumps({"s": "\ud800"}) == b'{"s":"\\ud800"}'


def test_loads_exact_keeps_every_number_as_written():
    doc = loads_exact('{"d": 0.10000000000000000001, "e": 1E2, "b": 123456789012345678901234567890, "i": 7}')
    assert dumps(doc) == b'{"d":0.10000000000000000001,"e":1E2,"b":123456789012345678901234567890,"i":7}'
    with pytest.raises(ValueError):
        loads_exact('{"x": NaN}')
