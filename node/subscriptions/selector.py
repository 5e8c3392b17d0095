"""Which events a subscription delivers: pure matching functions, no I/O.

`glob_match` has SQLite's GLOB semantics (what `/v1/all?streamPattern=` runs in SQL), so a live
subscriber and a catch-up read agree on every name. `contains` is PostgreSQL's jsonb `@>`: objects
contain subsets of their keys (recursively), arrays contain elements whatever their order or repeats,
scalars contain only an equal scalar of the same JSON type.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Sequence

# -- globs ----------------------------------------------------------------------------------------

_STAR = object()  # a `*` token; every other token matches exactly one character


def _glob_tokens(pattern: str) -> list | None:
    """The pattern as tokens: _STAR or a predicate on one character. None when it can never match (an
    unterminated `[` set: SQLite answers no match once it reaches it, and every match must reach it)."""
    tokens: list = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not tokens or tokens[-1] is not _STAR:
                tokens.append(_STAR)
        elif c == "?":
            tokens.append(lambda ch: True)
        elif c == "[":
            # as sqlite3's patternCompare: `^` first inverts, a `]` first is a member, `a-z` is a range
            # unless the `-` is first, last or right after a range
            invert = i < n and pattern[i] == "^"
            i += invert
            members: set[str] = set()
            ranges: list[tuple[str, str]] = []
            if i < n and pattern[i] == "]":
                members.add("]")
                i += 1
            prior = ""
            while i < n and pattern[i] != "]":
                c2 = pattern[i]
                if c2 == "-" and i + 1 < n and pattern[i + 1] != "]" and prior:
                    ranges.append((prior, pattern[i + 1]))
                    prior = ""
                    i += 2
                    continue
                members.add(c2)
                prior = c2
                i += 1
            if i >= n:
                return None
            i += 1  # the closing `]`
            tokens.append(_char_set(frozenset(members), tuple(ranges), invert))
        else:
            tokens.append(c)
    return tokens


def _char_set(members: frozenset, ranges: tuple, invert: bool) -> Callable[[str], bool]:
    def match(ch: str) -> bool:
        seen = ch in members or any(low <= ch <= high for low, high in ranges)
        return seen != invert
    return match


def _one(token, ch: str) -> bool:
    return token == ch if isinstance(token, str) else token(ch)


def glob_match(pattern: str, text: str) -> bool:
    """`text GLOB pattern` as SQLite evaluates it: `*` any run, `?` one character, `[...]` a set (`^`
    inverts), case-sensitive, no escape character. Linear backtracking (the last `*` only), so no
    pattern costs more than len(pattern) * len(text) steps."""
    tokens = _glob_tokens(pattern)
    if tokens is None:
        return False
    t = s = 0
    star_t, star_s = -1, 0
    while s < len(text):
        if t < len(tokens) and tokens[t] is not _STAR and _one(tokens[t], text[s]):
            t += 1
            s += 1
        elif t < len(tokens) and tokens[t] is _STAR:
            star_t, star_s = t, s
            t += 1
        elif star_t >= 0:
            star_s += 1
            t, s = star_t + 1, star_s
        else:
            return False
    while t < len(tokens) and tokens[t] is _STAR:
        t += 1
    return t == len(tokens)


def glob_literal(name: str) -> str:
    """A GLOB pattern matching exactly `name` (GLOB has no escape character: a one-member set is one)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


# -- JSON containment -----------------------------------------------------------------------------

MAX_PAYLOAD_DEPTH = 32


def parse_json(text: bytes | str) -> Any:
    """JSON with exact numbers (decimals as Decimal), as jsonb compares them: 9.4 = 9.40, 1 = 1.0."""
    return json.loads(text, parse_float=Decimal)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before numbers: True == 1 in Python, not in JSON
        return "boolean"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _scalar_equal(a: Any, b: Any) -> bool:
    kind = _kind(a)
    return kind == _kind(b) and kind not in ("array", "object") and a == b


def contains(container: Any, contained: Any, *, top: bool = True) -> bool:
    """PostgreSQL's `container @> contained` for jsonb values (parsed with parse_json)."""
    if isinstance(contained, dict):
        return isinstance(container, dict) and all(
            key in container and contains(container[key], value, top=False) for key, value in contained.items())
    if isinstance(contained, list):
        return isinstance(container, list) and all(
            any(contains(element, wanted, top=False) for element in container) for wanted in contained)
    if isinstance(container, list):
        # the one exception, at the top level only: an array contains a primitive value it has
        return top and any(_scalar_equal(element, contained) for element in container)
    return _scalar_equal(container, contained)


# -- selectors ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Selector:
    """One selector (or none: everything). System (`$`) streams are left out unless `include_system`."""
    stream: str | None = None
    types: Sequence[str] = ()
    type_prefix: str | None = None
    stream_prefix: str | None = None
    stream_pattern: str | None = None
    payload: dict | None = None
    include_system: bool = False

    def matches_stream(self, stream: str, event_type: str) -> bool:
        """Everything but the payload: what an event's stream and type decide."""
        if stream.startswith("$") and not self.include_system:
            return False
        if self.stream is not None:
            return stream == self.stream
        if self.types:
            return event_type in self.types
        if self.type_prefix is not None:
            return event_type.startswith(self.type_prefix)
        if self.stream_prefix is not None:
            return stream.startswith(self.stream_prefix)
        if self.stream_pattern is not None:
            return glob_match(self.stream_pattern, stream)
        return True

    def matches_data(self, data: Callable[[], Any]) -> bool:
        """The payload selector against an event's data (`data()` parses it, so a caller can cache it)."""
        if self.payload is None:
            return True
        try:
            value = data()
        except (ValueError, RecursionError):  # not JSON (or nested past what the parser recurses into)
            return False
        return contains(value, self.payload)
