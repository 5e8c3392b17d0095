"""Shared fixtures of the unit tests."""
from __future__ import annotations

import pytest

from evstore.node.log import Log
from evstore.node.storage import Storage


@pytest.fixture
async def log(tmp_path):
    """A log on a fresh SQLite file, closed (flushed) after the test."""
    storage = Storage(tmp_path / "data")
    storage.open()
    yield Log(storage)
    storage.close()
