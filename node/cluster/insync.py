"""The in-sync replicas a write needs, from a file re-read while the node runs.

The operator keeps the number in a ConfigMap mounted as a file: the kubelet replaces a mounted
ConfigMap's files (an atomic symlink swap) within about a minute of a change, without restarting the
pod, so a scale-up raises the number on every node without a rolling restart.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("evstore.cluster")

MAX_MIN_IN_SYNC = 9


class InSyncFileError(ValueError):
    pass


def read_min_in_sync(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InSyncFileError(f"cannot read: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
    if not text.isdigit() or not 1 <= int(text) <= MAX_MIN_IN_SYNC:
        raise InSyncFileError(f"must hold an integer from 1 to {MAX_MIN_IN_SYNC}, holds {text[:20]!r}")
    return int(text)


class MinInSyncFile:
    """The last valid number in the file: an unreadable or invalid file keeps the previous one (logged)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value = read_min_in_sync(path)
        self._complaint = ""

    def refresh(self) -> int:
        try:
            value = read_min_in_sync(self.path)
        except InSyncFileError as exc:
            if str(exc) != self._complaint:
                log.warning("%s: %s; keeping min in sync %d", self.path, exc, self.value)
                self._complaint = str(exc)
            return self.value
        self._complaint = ""
        if value != self.value:
            log.info("min in sync %d -> %d (from %s)", self.value, value, self.path)
            self.value = value
        return value
