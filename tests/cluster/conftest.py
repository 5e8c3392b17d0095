"""Real etcd for the cluster tests: one member (`etcd`) or three forming one cluster (`etcd3`), each with its
own ports, data dir and cluster token, stopped by PID even when the test fails."""
from __future__ import annotations

import pytest

from evstore.client.harness.localetcd import EtcdCluster, EtcdProcess


@pytest.fixture
def etcd(tmp_path) -> EtcdProcess:
    proc = EtcdProcess(tmp_path / "etcd")
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture
def etcd3(tmp_path) -> EtcdCluster:
    cluster = EtcdCluster(tmp_path / "etcd3", size=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
