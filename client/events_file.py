"""Events in JSON Lines form (one {"type", "data", "metadata"?, "id"?} per line) and batching. Pure."""
from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, TypeVar

from .protocol import loads_exact

T = TypeVar("T")

EVENT_KEYS = {"type", "data", "metadata", "id"}


class EventsFileError(ValueError):
    def __init__(self, line_number: int, reason: str) -> None:
        super().__init__(f"line {line_number}: {reason}")
        self.line_number = line_number
        self.reason = reason


def parse_event_line(line: str, line_number: int) -> dict[str, Any]:
    """One JSON Lines event, checked for shape (the server still validates content); its numbers are kept as
    written (protocol.loads_exact)."""
    try:
        value = loads_exact(line)
    except json.JSONDecodeError as exc:
        raise EventsFileError(line_number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # NaN or Infinity
        raise EventsFileError(line_number, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise EventsFileError(line_number, "expected a JSON object with \"type\" and \"data\"")
    if not isinstance(value.get("type"), str) or not value["type"]:
        raise EventsFileError(line_number, "\"type\" must be a non-empty string")
    unknown = set(value) - EVENT_KEYS
    if unknown:
        raise EventsFileError(line_number, f"unknown keys {sorted(unknown)} (allowed: type, data, metadata, id)")
    if "metadata" in value and value["metadata"] is not None and not isinstance(value["metadata"], dict):
        raise EventsFileError(line_number, "\"metadata\" must be an object")
    if "id" in value and value["id"] is not None and not isinstance(value["id"], str):
        raise EventsFileError(line_number, "\"id\" must be a string")
    return {k: v for k, v in value.items() if v is not None or k == "data"}


def read_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Events from JSON Lines; blank lines are skipped. Raises EventsFileError naming the line."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield parse_event_line(line, number)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    if size < 1:
        raise ValueError("batch size must be at least 1")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

