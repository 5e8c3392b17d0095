"""Start and stop real etcd processes on 127.0.0.1: one member (`EtcdProcess`, used by `evstore dev-cluster`
and the tests) or a small cluster (`EtcdCluster`). Processes are ended by PID, never by name."""
from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .localnode import free_port
from .localprocess import LocalProcess


class EtcdNotFound(RuntimeError):
    """No etcd binary: install it (Debian: `apt-get install etcd-server`) or point ETCD_BIN at it."""


def etcd_binary() -> str:
    path = os.environ.get("ETCD_BIN") or shutil.which("etcd")
    if not path or not os.access(path, os.X_OK):
        where = f"ETCD_BIN={path} is not executable" if os.environ.get("ETCD_BIN") else "etcd is not installed"
        raise EtcdNotFound(f"{where}: install it (Debian/Ubuntu: `apt-get install etcd-server`, "
                           "or https://github.com/etcd-io/etcd/releases) or set ETCD_BIN to its path")
    return path


class EtcdProcess(LocalProcess):
    """One etcd member. Alone it is a single-member cluster; `EtcdCluster` wires several together through
    `initial_cluster`. Restarts reuse the data dir and ports, so the member keeps its identity and data."""

    def __init__(self, data_dir: Path, name: str = "etcd", client_port: int | None = None,
                 peer_port: int | None = None, initial_cluster: str | None = None,
                 cluster_token: str | None = None, extra_args: tuple[str, ...] = (),
                 new_session: bool = False) -> None:
        self.binary = etcd_binary()
        self.data_dir = Path(data_dir)
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.cluster_token = cluster_token or f"evstore-{uuid.uuid4().hex}"
        self.extra_args = tuple(extra_args)
        self.new_session = new_session  # own session: a Ctrl-C reaches only the parent, which stops etcd
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        return [self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.initial_cluster, "--initial-cluster-token", self.cluster_token,
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
                *self.extra_args]

    def start(self, wait: bool = True) -> "EtcdProcess":
        if self.running():
            raise RuntimeError(f"etcd {self.name} is already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # etcd reads every ETCD_* variable as a flag; ours (ETCD_BIN) or a user's must not leak into it
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=self.new_session)
        if wait:
            self.wait_ready()
        return self

    @property
    def label(self) -> str:
        return f"etcd {self.name}"

    @property
    def address(self) -> str:
        return self.client_url

    def is_ready(self) -> bool:
        """etcd's /health says true once the member has a raft leader."""
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=1) as r:
                return r.status == 200 and b'"true"' in r.read()
        except (urllib.error.URLError, ConnectionError, OSError):
            return False


class EtcdCluster:
    """`size` etcd members on 127.0.0.1 forming one cluster (data in base_dir/etcd-<i>)."""

    def __init__(self, base_dir: Path, size: int = 3, extra_args: tuple[str, ...] = ()) -> None:
        base_dir = Path(base_dir)
        token = f"evstore-{uuid.uuid4().hex}"
        names = [f"etcd-{i}" for i in range(size)]
        peer_ports = [free_port() for _ in names]
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer_ports))
        self.members = [EtcdProcess(base_dir / n, name=n, peer_port=p, initial_cluster=initial,
                                    cluster_token=token, extra_args=extra_args)
                        for n, p in zip(names, peer_ports)]

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.client_url for m in self.members)

    def start(self, wait: bool = True) -> "EtcdCluster":
        try:
            for m in self.members:  # all before waiting: a member is healthy only once a quorum is up
                m.start(wait=False)
            if wait:
                for m in self.members:
                    m.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
