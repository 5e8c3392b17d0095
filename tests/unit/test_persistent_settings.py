"""Settings of a persistent subscription: what is stored in `$subscriptions` (as_json) parses back to the
same settings, so an identical repeat of a create is recognised after a restart; PATCH changes only the
tunable options; every bad field is a 400 naming it."""
from __future__ import annotations

import orjson
import pytest

from evstore.node.errors import InvalidRequest
from evstore.node.subscriptions.settings import (Filter, apply_changes, parse_settings,
                                                 subscription_name)


@pytest.mark.parametrize("body", [
    {"stream": "orders"},
    {"stream": "orders", "startFrom": 7, "bufferSize": 1000, "ackTimeout": 0.1, "maxRetries": 0,
     "concurrencyLimit": 100, "partitionBy": "stream", "checkpointAfterEvents": 1, "checkpointAfterSeconds": 3600},
    {"filter": {}},
    {"filter": {"type": ["A", "B"], "typePrefix": "Order", "streamPrefix": "o-", "streamPattern": "o-*"},
     "startFrom": "start"},
])
def test_stored_settings_parse_back_to_the_same(body):
    settings = parse_settings(body)
    stored = orjson.loads(orjson.dumps(settings.as_json()))
    assert parse_settings(stored) == settings


def test_defaults_are_the_contracts():
    settings = parse_settings({"stream": "s"})
    assert (settings.start_from, settings.buffer_size, settings.ack_timeout, settings.max_retries,
            settings.concurrency_limit, settings.partition_by) == ("end", 10, 30.0, 10, 1, "none")
    assert parse_settings({"filter": {"type": ["A", "A"]}}).filter == Filter(types=("A",))
    # a set of types: the same set in another order is the same subscription (an identical create again)
    assert parse_settings({"filter": {"type": ["B", "A"]}}) == parse_settings({"filter": {"type": ["A", "B", "A"]}})


def test_patch_changes_tunables_only():
    settings = parse_settings({"stream": "s", "startFrom": "start"})
    changed = apply_changes(settings, {"bufferSize": 3, "partitionBy": "stream"})
    assert (changed.buffer_size, changed.partition_by, changed.stream, changed.start_from) == (3, "stream", "s",
                                                                                               "start")
    for key in ("stream", "filter", "startFrom"):
        with pytest.raises(InvalidRequest) as refused:
            apply_changes(settings, {key: "x"})
        assert refused.value.details["field"] == key


@pytest.mark.parametrize("body, field", [
    ({"stream": None}, "stream"),
    ({"stream": "s", "bufferSize": None}, "bufferSize"),
    ({"stream": "s", "bufferSize": True}, "bufferSize"),
    ({"stream": "s", "ackTimeout": True}, "ackTimeout"),
    ({"stream": "s", "startFrom": None}, "startFrom"),
    ({"filter": {"type": "A"}}, "filter.type"),
    ({"filter": {"streamPrefix": None}}, "filter.streamPrefix"),
    ({"filter": {"streamPattern": "a\x00"}}, "filter.streamPattern"),
    ({"stream": "s", "filter": {}}, "stream"),
    ([], "body"),
])
def test_bad_fields_name_themselves(body, field):
    with pytest.raises(InvalidRequest) as refused:
        parse_settings(body)
    assert refused.value.details["field"] == field


@pytest.mark.parametrize("name, ok", [("a", True), ("A.b_c-9", True), ("9" * 128, True), ("9" * 129, False),
                                      ("-a", False), ("a b", False), ("é", False), ("", False)])
def test_names(name, ok):
    if ok:
        assert subscription_name(name) == name
    else:
        with pytest.raises(InvalidRequest):
            subscription_name(name)



@pytest.mark.parametrize("body, field", [({"filter": {"streamPrefix": "$snapshot-"}}, "filter.streamPrefix"),
                                         ({"filter": {"streamPattern": "$sub-*"}}, "filter.streamPattern")])
def test_a_new_filter_naming_system_streams_is_refused_but_a_stored_one_loads(body, field):
    """$-streams are never delivered to a filter subscription: a new one naming them would wait for ever. One an
    earlier release stored still parses, or loading every definition (each node that leads) would fail."""
    from evstore.node.subscriptions.settings import refuse_what_never_delivers
    settings = parse_settings(body)
    with pytest.raises(InvalidRequest) as refused:
        refuse_what_never_delivers(settings)
    assert refused.value.details["field"] == field
    refuse_what_never_delivers(parse_settings({"filter": {"streamPrefix": "order-"}}))
