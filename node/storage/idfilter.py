"""Which random event ids the log may hold: a Bloom filter over the id of every record that is not a UUIDv7, so
that the writer's check of a group's client-made ids reads no index page for the ids it has never seen.

Random ids (UUIDv4) are spread over the whole of each run of the index: probing one reads a leaf page of its
own in each, ~4-5 us at 10 M ids, and probing the window another ~1.8 us; the filter answers for most in under
~1.5 us. UUIDv7 ids are
not in it: they land at the end of `event_ids`, whose pages the writer has in its cache, and are probed there.

What holds: the filter holds every such id of every record of the log (and perhaps ids of records since
removed: more probes, never a wrong answer). It is saved to a file of its own after each write of the window into
a run and at close; the settings (key `id_filter`) name that file and the position through which it holds every
id, and a truncation lowers that position in its own transaction. On open the ids of the records above it are
added (the window's records, about); with no usable file the filter is built from the whole index once.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from importlib.metadata import version
from pathlib import Path
from typing import Iterable, Sequence

import crc32c
from rbloom import Bloom

FIRST_CAPACITY = 1 << 22  # ids in the first part (4.8 MB); each next part holds GROWTH times as many
GROWTH = 4  # few parts to check (2 up to 20 M ids, 3 up to 84 M), memory at most ~4x what the ids need
FALSE_POSITIVES = 0.01  # per part: a false positive costs the probe the filter saves
FILE_FORMAT = 1
# where rbloom puts a key's bits is its own business: a file another release of it wrote is rebuilt, not trusted
_RBLOOM = version("rbloom")


def is_uuid7(event_id: bytes) -> bool:
    """As the index's SQL tells them apart (ids.py): by the version nibble, the high half of the seventh byte."""
    return len(event_id) >= 7 and event_id[6] >> 4 == 7


def key(event_id: bytes) -> int:
    """The filter's hash of an id. A UUIDv4's 122 random bits are their own hash; any other id is hashed, so
    that ids with fixed parts (time-based UUIDs) spread over the filter too."""
    if len(event_id) == 16 and event_id[6] >> 4 == 4:
        return int.from_bytes(event_id, "little", signed=True)
    return int.from_bytes(hashlib.blake2b(event_id, digest_size=16).digest(), "little", signed=True)


def keys(event_ids: Iterable[bytes]) -> list[int]:
    """The keys of those ids the filter is about (not UUIDv7)."""
    return [key(i) for i in event_ids if not is_uuid7(i)]


def sort_out(id_filter: "IdFilter | None", event_ids: Iterable[bytes]) -> tuple[list[bytes], list[int]]:
    """(the ids the log may hold: the UUIDv7 ones and those the filter may hold, all of them with no filter;
    the keys of the ids the filter is about, for adding them once they are written)."""
    suspects: list[bytes] = []
    id_keys: list[int] = []
    for event_id in event_ids:
        if is_uuid7(event_id):
            suspects.append(event_id)
            continue
        id_key = key(event_id)
        id_keys.append(id_key)
        if id_filter is None or id_filter.may_hold(id_key):
            suspects.append(event_id)
    return suspects, id_keys


class IdFilter:
    """A scalable Bloom filter (a new part, GROWTH times larger, once the last is full) of id keys."""

    def __init__(self, parts: Sequence[tuple[Bloom, int, int]] = ()) -> None:
        self._parts = [list(p) for p in parts]  # [filter, capacity, ids added]
        if not self._parts:
            self._new_part(FIRST_CAPACITY)

    def _new_part(self, capacity: int) -> None:
        self._parts.append([Bloom(capacity, FALSE_POSITIVES, int), capacity, 0])

    @property
    def count(self) -> int:
        return sum(p[2] for p in self._parts)

    def add(self, id_keys: Sequence[int]) -> None:
        done = 0
        while done < len(id_keys):
            part = self._parts[-1]
            room = part[1] - part[2]
            if room <= 0:
                self._new_part(part[1] * GROWTH)
                continue
            taken = id_keys[done:done + room]
            part[0].update(taken)
            part[2] += len(taken)
            done += len(taken)

    def may_hold(self, id_key: int) -> bool:
        for part in self._parts:
            if id_key in part[0]:
                return True
        return False

    def to_bytes(self) -> bytes:
        bodies = [p[0].save_bytes() if p[2] else b"" for p in self._parts]  # an empty part: no bits to keep
        header = {"format": FILE_FORMAT, "rbloom": _RBLOOM,
                  "parts": [[p[1], p[2], len(b)] for p, b in zip(self._parts, bodies)]}
        body = b"".join(bodies)
        header["crc32c"] = crc32c.crc32c(body)
        return json.dumps(header).encode() + b"\n" + body

    @classmethod
    def from_bytes(cls, data: bytes) -> "IdFilter":
        """Raises ValueError for anything but what to_bytes wrote."""
        line, _, body = data.partition(b"\n")
        try:
            header = json.loads(line)
            if ((header["format"], header["rbloom"]) != (FILE_FORMAT, _RBLOOM)
                    or header["crc32c"] != crc32c.crc32c(body)):
                raise ValueError("not an id filter of this format, or damaged")
            parts, offset = [], 0
            for capacity, count, size in header["parts"]:
                bits = body[offset:offset + size]
                part = Bloom.load_bytes(bits, int) if count else Bloom(int(capacity), FALSE_POSITIVES, int)
                parts.append((part, int(capacity), int(count)))
                offset += size
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not an id filter: {exc}") from exc
        if offset != len(body) or not parts:
            raise ValueError("not an id filter: wrong length")
        return cls(parts)


def new_file_name() -> str:
    return f"idfilter-{secrets.token_hex(8)}.bloom"


def write_file(data_dir: Path, name: str, data: bytes) -> None:
    """Write a file durably and whole: others see it complete or not at all."""
    path, temporary = data_dir / name, data_dir / (name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_file(data_dir: Path, name: str) -> IdFilter | None:
    """The filter in this file of the data directory, or None if it is missing or not one."""
    if not name.startswith("idfilter-") or "/" in name:
        return None
    try:
        return IdFilter.from_bytes((data_dir / name).read_bytes())
    except (OSError, ValueError):
        return None


def remove_files_except(data_dir: Path, name: str | None) -> None:
    for path in data_dir.glob("idfilter-*"):
        if path.name != name:
            path.unlink(missing_ok=True)


def encode_state(name: str, through: int) -> str:
    return json.dumps({"file": name, "through": through})


def decode_state(value: str | None) -> tuple[str, int] | None:
    try:
        state = json.loads(value) if value else None
        return (str(state["file"]), int(state["through"])) if state else None
    except (ValueError, KeyError, TypeError):
        return None
