"""Shared fixtures: real node processes on 127.0.0.1 with data in a temp dir."""
from __future__ import annotations

import pytest

from nodeproc import NodeProcess


@pytest.fixture
def node_factory(tmp_path):
    started: list[NodeProcess] = []

    def make(name: str = "node", args: tuple[str, ...] = (), env: dict[str, str] | None = None,
             start: bool = True) -> NodeProcess:
        data = tmp_path / name / "data"
        data.mkdir(parents=True, exist_ok=True)
        proc = NodeProcess(data, args=args, env=env)
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def node(node_factory) -> NodeProcess:
    """A running single node; `node.url` is its base URL."""
    return node_factory()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory) -> NodeProcess:
    """One running node for a whole test module (its tests use distinct stream names)."""
    data = tmp_path_factory.mktemp("shared-node") / "data"
    data.mkdir()
    proc = NodeProcess(data)
    try:
        yield proc.start()
    finally:
        proc.stop()
