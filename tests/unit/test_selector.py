"""Selector matching: SQLite GLOB semantics (checked against SQLite itself) and PostgreSQL jsonb `@>`
containment (the examples of the PostgreSQL documentation, section 8.14.3)."""
from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

from evstore.node.subscriptions.selector import (Selector, contains, glob_literal, glob_match, parse_json)

SQL = sqlite3.connect(":memory:")


def sqlite_glob(pattern: str, text: str) -> bool:
    return bool(SQL.execute("SELECT ? GLOB ?", (text, pattern)).fetchone()[0])


@pytest.mark.parametrize("pattern, text", [
    ("order-*", "order-1"), ("order-*", "order"), ("*", ""), ("?", ""), ("?", "é"), ("a?c", "abc"),
    ("[abc]x", "bx"), ("[^abc]x", "bx"), ("[a-c]", "b"), ("[c-a]", "b"), ("[]]", "]"), ("[]a]", "a"),
    ("[^]]", "]"), ("[-a]", "-"), ("[a-]", "-"), ("[a-c-e]", "d"), ("[a-c-e]", "-"), ("[", "["),
    ("[abc", "a"), ("*[", "x["), ("a*b*c", "aXbYc"), ("a*b*c", "aXbY"), ("*a*a*a*a*b", "a" * 300),
    ("ORDER-*", "order-1"), ("[*]", "*"), ("*[?]", "x?"), ("\\*", "\\x"), ("**", "x"), ("*?", ""),
])
def test_glob_agrees_with_sqlite(pattern, text):
    assert glob_match(pattern, text) == sqlite_glob(pattern, text)


ALPHABET = "ab-]^[*?é"


@settings(max_examples=3000, deadline=None)
@given(st.text(ALPHABET, max_size=8), st.text("ab-]^[é", max_size=8))
def test_glob_agrees_with_sqlite_on_random_patterns(pattern, text):
    assert glob_match(pattern, text) == sqlite_glob(pattern, text)


@settings(max_examples=500, deadline=None)
@given(st.text(ALPHABET + "x", max_size=12))
def test_glob_literal_matches_only_the_name(name):
    pattern = glob_literal(name)
    assert sqlite_glob(pattern, name) and glob_match(pattern, name)
    assert not glob_match(pattern, name + "x") and not sqlite_glob(pattern, name + "x")


def pg(container: str, contained: str) -> bool:
    return contains(parse_json(container), parse_json(contained))


@pytest.mark.parametrize("container, contained, expected", [
    # PostgreSQL 8.14.3 "jsonb Containment and Existence", in its order
    ('"foo"', '"foo"', True),
    ("[1, 2, 3]", "[1, 3]", True),
    ("[1, 2, 3]", "[3, 1]", True),
    ("[1, 2, 3]", "[1, 2, 2]", True),
    ('{"product": "PostgreSQL", "version": 9.4, "jsonb": true}', '{"version": 9.4}', True),
    ("[1, 2, [1, 3]]", "[1, 3]", False),
    ("[1, 2, [1, 3]]", "[[1, 3]]", True),
    ('{"foo": {"bar": "baz"}}', '{"bar": "baz"}', False),
    ('{"foo": {"bar": "baz"}}', '{"foo": {}}', True),
    ('["foo", "bar"]', '"bar"', True),
    ('"bar"', '["bar"]', False),
    # 9.16 operators table
    ('{"a":1, "b":2}', '{"b":2}', True),
    # numbers compare as numerics; JSON types never mix
    ('{"v": 9.40}', '{"v": 9.4}', True), ('{"v": 1}', '{"v": 1.0}', True),
    ('{"v": true}', '{"v": 1}', False), ('{"v": 0}', '{"v": false}', False), ('{"v": null}', '{"v": null}', True),
    ('{"v": 0.1}', '{"v": 0.10000000000000001}', False), ('{"v": "1"}', '{"v": 1}', False),
    # the scalar-in-array exception holds only at the top level
    ('{"tags": ["x", "y"]}', '{"tags": "x"}', False), ('{"tags": ["x", "y"]}', '{"tags": ["y"]}', True),
    ("{}", "{}", True), ("[]", "{}", False), ('{"a": []}', '{"a": {}}', False), ('{"a": [1]}', '{"a": []}', True),
    ('[{"a": 1, "b": 2}, {"c": 3}]', '[{"a": 1}, {"c": 3}]', True), ('[{"a": 1}]', '[{"a": 1, "b": 2}]', False),
])
def test_containment_follows_postgresql(container, contained, expected):
    assert pg(container, contained) is expected


def test_selector_kinds_and_system_streams():
    assert Selector().matches_stream("order-1", "Placed")
    assert not Selector().matches_stream("$$order-1", "$metadata")
    assert Selector(include_system=True).matches_stream("$$order-1", "$metadata")
    assert Selector(stream="order-1").matches_stream("order-1", "T")
    assert not Selector(stream="order-1").matches_stream("order-10", "T")
    assert Selector(types=("A", "B")).matches_stream("s", "B") and not Selector(types=("A",)).matches_stream("s", "B")
    assert Selector(type_prefix="Order").matches_stream("s", "OrderPlaced")
    assert Selector(stream_prefix="order-").matches_stream("order-2", "T")
    assert Selector(stream_pattern="order-[0-9]").matches_stream("order-2", "T")
    assert not Selector(stream_pattern="order-[0-9]").matches_stream("order-x", "T")
    wanted = Selector(payload={"customer": {"tier": "gold"}})
    assert wanted.matches_data(lambda: parse_json(b'{"customer": {"tier": "gold", "id": 7}, "total": 3}'))
    assert not wanted.matches_data(lambda: parse_json(b'{"customer": {"tier": "silver"}}'))
    assert not wanted.matches_data(lambda: parse_json(b"not json"))
    assert not wanted.matches_data(lambda: parse_json(b"[" * 5000 + b"]" * 5000))
