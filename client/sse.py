"""Server-Sent Events line parser (the WHATWG event-stream format), pure and incremental."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SSEMessage:
    event: str
    data: str
    id: str | None = None


class SSEParser:
    """Feed decoded lines (without the line ending); a blank line completes a message."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, line: str) -> SSEMessage | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment: heartbeats are sent this way
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> SSEMessage | None:
        if not self._data:
            self._event = ""
            return None
        message = SSEMessage(event=self._event or "message", data="\n".join(self._data), id=self._id)
        self._data = []
        self._event = ""
        return message
