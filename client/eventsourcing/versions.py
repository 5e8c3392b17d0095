"""Originator versions <-> evstore stream versions.

eventsourcing numbers an aggregate's events from its first version (1 for `Aggregate`, 0 in some of
the library's tests, any integer in principle) and needs "this version exists" to be an integrity
error. evstore numbers a stream's events 1, 2, 3... and checks an expected version on append. The
mapping: an aggregate's stream holds its events in order, contiguously, and

    stream version = originator version - base + 1

where `base` is the originator version of the aggregate's first event. Every event also carries its
originator version in its metadata (`{"v": N}`), so reads never need `base`; appends do (for the
expected version) and learn it from the stream's first event when they cannot guess it.
"""
from __future__ import annotations

from typing import Sequence

ORIGINATOR_VERSION_KEY = "v"


class NotContiguous(ValueError):
    """The events of one aggregate in one call do not have consecutive originator versions."""


def guessed_base(first_version: int) -> int:
    """The base to try when nothing is known of a stream: a first event at 0 starts a 0-based
    aggregate; anything else is taken to follow eventsourcing's default `INITIAL_VERSION = 1`."""
    return 0 if first_version <= 0 else 1


def expected_stream_version(first_version: int, base: int) -> int:
    """The stream version an append of events starting at `first_version` expects to find."""
    return first_version - base


def base_of(originator_version: int, stream_version: int) -> int:
    """The base of a stream, from any one of its events."""
    return originator_version - stream_version + 1


def check_contiguous(versions: Sequence[int]) -> None:
    for earlier, later in zip(versions, versions[1:]):
        if later != earlier + 1:
            raise NotContiguous(f"originator versions {earlier} then {later} in one call")


def forward_start(gt: int | None, base: int | None) -> int | None:
    """The stream version to read forward from for originator versions > gt. With the base unknown it
    assumes 1 (eventsourcing's default); the read filters by each event's own originator version, and
    the caller reads again from the right place when the first event shows a larger base."""
    if gt is None:
        return None
    return max(1, gt + 2 - (1 if base is None else base))


def backward_start(lte: int | None, base: int | None) -> int | None:
    """The stream version to read backward from for originator versions <= lte (base 0 when unknown:
    the highest candidate)."""
    if lte is None:
        return None
    return max(1, lte - (0 if base is None else base) + 1)
