"""A private network of Linux network namespaces for fault tests and benchmarks (root only): one namespace
per host (each etcd, each node), each with a veth leg to a bridge in a namespace of its own, and one leg from
this process's namespace to the bridge so that the test can talk to the hosts. Partitions are iptables DROP
rules inside the hosts' namespaces between chosen pairs; `heal()` removes them. Nothing here touches a
physical interface: the hosts see only their own loopback and the bridge.

Every name carries this process's PID, so that `sweep_stale()` removes what a killed run left behind without
touching another live run's namespaces. Processes inside are started with `ip netns exec`, which execs the
command: the PID of the Popen is the command's own, so signals and kills by PID work as usual.
"""
from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

from .localcluster import LocalCluster
from .localetcd import EtcdProcess
from .localnode import NodeProcess

NAME_PREFIX = "evsnet"
_NAME = re.compile(rf"^{NAME_PREFIX}-(\d+)-([0-9a-f]+)-(.+)$")
COMMAND_TIMEOUT = 20.0


class NetnsUnavailable(RuntimeError):
    """Why namespaces cannot be made here (not root, no `ip`, no `iptables`)."""


def unavailable_reason() -> str | None:
    """None when this process can build a namespace lab, else why not (for a test's skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root (run the suite as root, as .ci/run does)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: apt-get install {'iproute2' if tool == 'ip' else tool}; " \
                   "`make test` installs iptables)"
    return None


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete the namespaces (and with them their veth legs) of labs whose process is gone."""
    listed = run("ip", "netns", "list", check=False).stdout.split("\n")
    removed = []
    for line in listed:
        name = line.split(" ")[0]
        match = _NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for line in run("ip", "-o", "link", "show", check=False).stdout.split("\n"):
        match = re.match(r"^\d+: (evh(\d+)x[0-9a-f]+)[@:]", line)
        if match and not _pid_alive(int(match.group(2))):
            run("ip", "link", "del", match.group(1), check=False)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    used = [ipaddress.ip_network(m, strict=False)
            for m in re.findall(r"inet (\d+\.\d+\.\d+\.\d+/\d+)", run("ip", "-o", "-4", "addr", "show").stdout)]
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randrange(180, 250)}.{rng.randrange(0, 256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.x.y.0/24 for the lab")


class NetnsLab:
    """Hosts `hosts` (names like "etcd", "node1") on one bridge. `address(host)` is its IPv4 address;
    `cut(a, b)` drops every packet between two hosts, `isolate(a, others)` between a and each of others."""

    def __init__(self, hosts: list[str]) -> None:
        if len(set(hosts)) != len(hosts) or not hosts:
            raise ValueError("hosts need distinct names")
        self.hosts = list(hosts)
        self.tag = f"{os.getpid()}-{os.urandom(3).hex()}"
        self.subnet: ipaddress.IPv4Network | None = None
        self._addresses: dict[str, str] = {}
        self.host_leg = f"evh{os.getpid()}x{self.tag.split('-')[1][:4]}"[:15]
        self._made: list[str] = []
        self._leg_made = False
        self.cuts: set[frozenset[str]] = set()

    def namespace(self, host: str) -> str:
        return f"{NAME_PREFIX}-{self.tag}-{host}"

    @property
    def bridge_namespace(self) -> str:
        return f"{NAME_PREFIX}-{self.tag}-bridge"

    def address(self, host: str) -> str:
        return self._addresses[host]

    @property
    def client_address(self) -> str:
        """This process's address on the lab's bridge."""
        assert self.subnet is not None
        return str(self.subnet[1])

    # -- building and removing ------------------------------------------------------------------

    def create(self) -> "NetnsLab":
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        sweep_stale()
        try:
            self.subnet = _free_subnet()
            bridge = self.bridge_namespace
            self._add_namespace(bridge)
            run("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", bridge, "link", "set", "br0", "up")
            for index, host in enumerate(self.hosts):
                address = str(self.subnet[10 + index])
                self._addresses[host] = address
                namespace = self.namespace(host)
                self._add_namespace(namespace)
                inside, outside = f"evi{index}{self.tag[-6:]}", f"evo{index}{self.tag[-6:]}"
                run("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
                run("ip", "link", "set", inside, "netns", namespace)
                run("ip", "link", "set", outside, "netns", bridge)
                run("ip", "-n", namespace, "link", "set", inside, "name", "eth0")
                run("ip", "-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
                run("ip", "-n", namespace, "link", "set", "eth0", "up")
                run("ip", "-n", bridge, "link", "set", outside, "master", "br0", "up")
            # the leg of this process's namespace: only the lab's /24 is routed over it
            outside = f"evo{len(self.hosts)}{self.tag[-6:]}"
            run("ip", "link", "add", self.host_leg, "type", "veth", "peer", "name", outside)
            self._leg_made = True
            run("ip", "link", "set", outside, "netns", bridge)
            run("ip", "-n", bridge, "link", "set", outside, "master", "br0", "up")
            run("ip", "addr", "add", f"{self.client_address}/{self.subnet.prefixlen}", "dev", self.host_leg)
            run("ip", "link", "set", self.host_leg, "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def _add_namespace(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self._made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def destroy(self) -> None:
        """Remove every namespace (their processes must be gone first) and the leg of this namespace."""
        if self._leg_made:
            run("ip", "link", "del", self.host_leg, check=False)
            self._leg_made = False
        for name in reversed(self._made):
            run("ip", "netns", "del", name, check=False)
        self._made.clear()

    def __enter__(self) -> "NetnsLab":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()

    # -- partitions ---------------------------------------------------------------------------

    def _drop(self, host: str, peer: str, action: str) -> None:
        namespace, address = self.namespace(host), self.address(peer)
        run("ip", "netns", "exec", namespace, "iptables", action, "INPUT", "-s", address, "-j", "DROP")
        run("ip", "netns", "exec", namespace, "iptables", action, "OUTPUT", "-d", address, "-j", "DROP")

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between hosts a and b (both directions, both ends)."""
        pair = frozenset((a, b))
        if pair in self.cuts:
            return
        self._drop(a, b, "-A")
        self._drop(b, a, "-A")
        self.cuts.add(pair)

    def isolate(self, host: str, others: list[str]) -> None:
        for other in others:
            self.cut(host, other)

    def partition(self, *sides: list[str]) -> None:
        """Cut every pair of hosts on different sides."""
        for i, side in enumerate(sides):
            for other in sides[i + 1:]:
                for a in side:
                    for b in other:
                        self.cut(a, b)

    def heal(self) -> None:
        for pair in list(self.cuts):
            a, b = sorted(pair)
            self._drop(a, b, "-D")
            self._drop(b, a, "-D")
            self.cuts.discard(pair)

    # -- processes ----------------------------------------------------------------------------

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(host)]


class NetnsNodeProcess(NodeProcess):
    """A node in its own namespace, listening on its lab address; the test reaches it over the lab's bridge.
    zeroconf binds to that address only (`--discovery-interfaces`), so mDNS stays on the lab's bridge."""

    def __init__(self, lab: NetnsLab, host: str, data_dir: Path, port: int = 7113,
                 args: tuple[str, ...] = ()) -> None:
        self.lab, self.host = lab, host
        super().__init__(data_dir, port=port, args=args)
        self.log_path = self.data_dir.parent / f"{host}.log"

    @property
    def url(self) -> str:
        return f"http://{self.lab.address(self.host)}:{self.port}"

    @property
    def address(self) -> str:
        return self.url

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--host") + 1] = self.lab.address(self.host)
        return [*self.lab.exec_prefix(self.host), *command]


class NetnsEtcdProcess(EtcdProcess):
    """etcd in its own namespace (one member), on its lab address."""

    def __init__(self, lab: NetnsLab, host: str, data_dir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.lab, self.host = lab, host
        super().__init__(data_dir, name=host, client_port=2379, peer_port=2380, extra_args=extra_args)

    @property
    def client_url(self) -> str:
        return f"http://{self.lab.address(self.host)}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.lab.address(self.host)}:{self.peer_port}"

    def command(self) -> list[str]:
        return [*self.lab.exec_prefix(self.host), *super().command()]


class NetnsCluster(LocalCluster):
    """LocalCluster's nodes and etcd, each in its own namespace of `lab` (hosts "etcd", "node1".."nodeN")."""

    def __init__(self, lab: NetnsLab, base_dir: Path, nodes: int = 3, **kwargs) -> None:
        super().__init__(base_dir, nodes=nodes, **kwargs)
        self.lab = lab

    @staticmethod
    def hosts(nodes: int) -> list[str]:
        return ["etcd", *(f"node{i + 1}" for i in range(nodes))]

    @property
    def etcd_endpoints(self) -> tuple[str, ...]:
        if self.etcd is None:
            raise RuntimeError("the cluster is not started")
        return (self.etcd.client_url,)

    def start(self, wait: bool = True) -> "NetnsCluster":
        try:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self.etcd = NetnsEtcdProcess(self.lab, "etcd", self.base_dir / "etcd").start()
            self.nodes = [self._node_process(i) for i in range(self.size)]
            for node in self.nodes:
                node.start(wait=False)
            if wait:
                for node in self.nodes:
                    node.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _node_process(self, index: int) -> NodeProcess:
        host = self.node_id(index)
        data = self.base_dir / host / "data"
        data.mkdir(parents=True, exist_ok=True)
        node = NetnsNodeProcess(self.lab, host, data)
        args = ["--node-id", host, "--store-id", self.store_id, "--etcd-endpoints", ",".join(self.etcd_endpoints),
                "--cluster-secret", self.secret, "--cluster-size", str(self.size), "--discovery", "zeroconf,etcd",
                "--discovery-interfaces", self.lab.address(host), "--advertise-url", node.url]
        if self.lease_ttl is not None:
            args += ["--lease-ttl", f"{self.lease_ttl:g}"]
        node.args = (*args, *self.extra_args)
        return node
