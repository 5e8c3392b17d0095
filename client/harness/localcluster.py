"""A whole cluster on 127.0.0.1: one etcd and N node processes (`evstore dev-cluster` and the fault tests).
Processes are ended by PID, never by name."""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .localnode import NodeProcess, free_port

POLL_INTERVAL = 0.1


class LocalCluster:
    """`nodes` nodes (ids node1..nodeN; index i of `nodes`/`node(i)` is node{i+1}) of store `store_id`.

    Data lives in base_dir/etcd and base_dir/node<i>/data. With `etcd_endpoints` an existing etcd is used
    instead of starting one. `new_session` puts the children in their own session so that a terminal's
    Ctrl-C reaches only the parent, which then stops them in order.
    """

    def __init__(self, base_dir: Path, nodes: int = 3, store_id: str = "dev", secret: str | None = None,
                 lease_ttl: float | None = None, extra_args: tuple[str, ...] = (),
                 etcd_endpoints: tuple[str, ...] | None = None, new_session: bool = False) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(base_dir)
        self.size = nodes
        self.store_id = store_id
        self.secret = secret or secrets.token_hex(16)
        self.lease_ttl = lease_ttl
        self.extra_args = tuple(extra_args)
        self.new_session = new_session
        self.etcd = None  # an EtcdProcess when this cluster runs its own
        self._etcd_endpoints = tuple(etcd_endpoints) if etcd_endpoints else None
        self.nodes: list[NodeProcess] = []

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def etcd_endpoints(self) -> tuple[str, ...]:
        if self._etcd_endpoints is not None:
            return self._etcd_endpoints
        if self.etcd is None:
            raise RuntimeError("the cluster is not started")
        return (self.etcd.client_url,)

    def start(self, wait: bool = True) -> "LocalCluster":
        """Starts etcd (raises localetcd.EtcdNotFound when it is not installed), then every node; with
        `wait`, returns once every node answers ready. Stops whatever it started when anything fails."""
        try:
            if self._etcd_endpoints is None:
                from .localetcd import EtcdProcess

                self.base_dir.mkdir(parents=True, exist_ok=True)
                self.etcd = EtcdProcess(self.base_dir / "etcd", new_session=self.new_session).start()
            self.nodes = [self._node_process(i) for i in range(self.size)]
            for node in self.nodes:  # all before waiting: a node may be ready only once its peers are up
                node.start(wait=False)
            if wait:
                for node in self.nodes:
                    node.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _node_process(self, index: int) -> NodeProcess:
        data = self.base_dir / f"node{index + 1}" / "data"
        data.mkdir(parents=True, exist_ok=True)
        port = free_port()
        args = ["--node-id", f"node{index + 1}", "--store-id", self.store_id,
                "--etcd-endpoints", ",".join(self.etcd_endpoints), "--cluster-secret", self.secret,
                "--cluster-size", str(self.size), "--discovery", "zeroconf,etcd",
                "--discovery-interfaces", "127.0.0.1", "--advertise-url", f"http://127.0.0.1:{port}"]
        if self.lease_ttl is not None:
            args += ["--lease-ttl", f"{self.lease_ttl:g}"]
        return NodeProcess(data, port=port, args=(*args, *self.extra_args), new_session=self.new_session)

    def stop(self, graceful: bool = False) -> None:
        """Ends every node (SIGTERM first when `graceful`, else SIGKILL), then etcd."""
        for node in self.nodes:
            try:
                if graceful:
                    node.terminate()
                else:
                    node.stop()
            except Exception:  # one stuck node must not keep the others (or etcd) running
                node.stop()
        if self.etcd is not None:
            self.etcd.stop()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- looking at it ------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, index: int) -> NodeProcess:
        return self.nodes[index]

    def node_id(self, index: int) -> str:
        return f"node{index + 1}"

    def index_of(self, node_id: str) -> int:
        return int(node_id.removeprefix("node")) - 1

    def live(self) -> list[int]:
        """Indexes of the nodes whose process is running (a SIGSTOPped one counts as running)."""
        return [i for i, n in enumerate(self.nodes) if n.proc is not None and n.proc.poll() is None]

    def cluster_status(self, timeout: float = 2.0) -> list[dict | None]:
        """Each node's GET /v1/cluster, None for a node that is down or does not answer."""
        return [self._cluster_of(i, timeout) if i in self.live() else None for i in range(self.size)]

    def _cluster_of(self, index: int, timeout: float) -> dict | None:
        try:
            with urllib.request.urlopen(self.nodes[index].url + "/v1/cluster", timeout=timeout) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            return None

    def wait_leader(self, timeout: float = 30.0, exclude: tuple[int, ...] = ()) -> tuple[int, int]:
        """Polls /v1/cluster on every live node (but `exclude`) until one says it is leader and all the
        others name it; returns (its index, epoch)."""
        deadline = time.monotonic() + timeout
        last: list[Any] = []
        while True:
            agreed = self.agreed_leader(exclude)
            if agreed is not None:
                return agreed
            if time.monotonic() >= deadline:
                last = self.cluster_status()
                break
            time.sleep(POLL_INTERVAL)  # leadership changes have no event a client could await
        summary = "; ".join(f"node{i + 1}: " + ("down" if s is None else
                                                 f"role={s.get('role')} leader={(s.get('leader') or {}).get('node')}"
                                                 f" epoch={s.get('epoch')}") for i, s in enumerate(last))
        raise TimeoutError(f"no agreed leader within {timeout:g}s: {summary}")

    def agreed_leader(self, exclude: tuple[int, ...] = ()) -> tuple[int, int] | None:
        """(index, epoch) when every live node (but `exclude`) agrees on one leader that says so, else None."""
        watched = [i for i in self.live() if i not in exclude]
        statuses = {i: self._cluster_of(i, 2.0) for i in watched}
        if not watched or any(s is None for s in statuses.values()):
            return None
        leaders = [i for i, s in statuses.items() if s.get("role") == "leader"]
        if len(leaders) != 1:
            return None
        index = leaders[0]
        epoch = statuses[index].get("epoch")
        for s in statuses.values():
            named = (s.get("leader") or {}).get("node")
            if named != self.node_id(index) or s.get("epoch") != epoch:
                return None
        return index, epoch

    async def wait_leader_async(self, timeout: float = 30.0, exclude: tuple[int, ...] = ()) -> tuple[int, int]:
        """`wait_leader` off the event loop, for tests that run a workload meanwhile."""
        return await asyncio.to_thread(self.wait_leader, timeout, exclude)
