"""Discovery: who might be a member of this store. It only proposes peers; etcd decides membership and
leadership, and liveness never comes from here (zeroconf does not notice a SIGKILLed peer).

Three sources, any subset enabled: signed mDNS announcements (python-zeroconf, bound to the given IPv4
addresses only), the A records of a DNS name (the headless Service in Kubernetes, where multicast often does
not cross the CNI), and the member keys in etcd.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .auth import SIGNATURE_FIELD, sign_announcement, verify_announcement

log = logging.getLogger(__name__)

SERVICE_TYPE = "_evstore._tcp.local."
PROTOCOL_VERSION = "1"
REFRESH_INTERVAL = 5.0
RESOLVE_TIMEOUT_MS = 3000
SOURCES = ("zeroconf", "dns", "etcd")
_MAX_INSTANCE_LABEL = 63  # bytes in one DNS label


@dataclass(frozen=True)
class Peer:
    node: str
    url: str
    source: str  # "zeroconf", "dns" or "etcd"


def instance_name(store_id: str, node_id: str) -> str:
    label = f"{store_id}-{node_id}"
    if len(label.encode()) > _MAX_INSTANCE_LABEL:  # keep it unique: a prefix plus a hash of the whole
        digest = hashlib.sha256(label.encode()).hexdigest()[:12]
        label = label.encode()[:_MAX_INSTANCE_LABEL - 13].decode(errors="ignore") + "-" + digest
    return f"{label}.{SERVICE_TYPE}"


def _decode_txt(properties: dict[bytes, bytes | None]) -> dict[str, str] | None:
    try:
        return {key.decode(): (value or b"").decode() for key, value in properties.items()}
    except UnicodeDecodeError:
        return None


def _host_port(url: str) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(url)
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def _ipv4_addresses(interfaces: Iterable[str]) -> list[str]:
    addresses = []
    for interface in interfaces:
        try:
            if ipaddress.ip_address(interface).version == 4:
                addresses.append(interface)
        except ValueError:
            pass
    return addresses


class Discovery:
    """`peers()` is the union of what the enabled sources report, without this node; an etcd entry wins
    over a zeroconf one for the same node. `changed` is set whenever that union changes: clear it, then
    await it."""

    def __init__(self, store_id: str, node_id: str, url: str, secret: str, *,
                 methods: tuple[str, ...] = SOURCES, interfaces: tuple[str, ...] = ("127.0.0.1",),
                 dns_name: str | None = None, port: int | None = None,
                 etcd_members: Callable[[], Awaitable[list[Any]]] | None = None, metrics: Any = None,
                 refresh_interval: float = REFRESH_INTERVAL) -> None:
        unknown = set(methods) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown discovery methods: {sorted(unknown)}")
        self.store_id = store_id
        self.node_id = node_id
        self.url = url
        self._secret = secret
        self.methods = tuple(methods)
        self.interfaces = tuple(interfaces)
        self.dns_name = dns_name
        self._own_host, self._own_port = _host_port(url)
        self.port = port if port is not None else self._own_port
        self._etcd_members = etcd_members
        self.metrics = metrics
        self._refresh_interval = refresh_interval
        self.changed = asyncio.Event()
        self._by_source: dict[str, dict[str, Peer]] = {source: {} for source in SOURCES}
        self._zeroconf_nodes: dict[str, str] = {}  # service instance name -> node id
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._refresh_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # ---- public

    def peers(self) -> dict[str, Peer]:
        merged: dict[str, Peer] = {}
        for source in ("dns", "zeroconf", "etcd"):
            merged.update(self._by_source[source])
        return merged

    async def start(self) -> None:
        if "zeroconf" in self.methods:
            try:
                await self._start_zeroconf()
            except Exception:  # the other sources still work; etcd decides membership anyway
                log.warning("zeroconf discovery could not start on %s", self.interfaces, exc_info=True)
                await self._close_zeroconf()
        if "dns" in self.methods or "etcd" in self.methods:
            await self.refresh()
            self._refresh_task = asyncio.create_task(self._refresh_loop(), name="discovery-refresh")

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        if self._refresh_task is not None:
            tasks.append(self._refresh_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_zeroconf()

    async def refresh(self) -> None:
        """Re-read DNS and etcd. Never raises: a failing source keeps what it last reported."""
        if "dns" in self.methods and self.dns_name:
            await self._refresh_dns()
        if "etcd" in self.methods and self._etcd_members is not None:
            await self._refresh_etcd()

    # ---- bookkeeping

    def _replace(self, source: str, peers: dict[str, Peer]) -> None:
        if peers == self._by_source[source]:
            return
        before = self.peers()
        self._by_source[source] = peers
        after = self.peers()
        if after != before:
            if self.metrics is not None:
                self.metrics.gossip_peers.set(len(after))
            self.changed.set()

    def _reject(self, name: str, reason: str) -> None:
        log.debug("ignoring announcement %s: %s", name, reason)
        if self.metrics is not None:
            self.metrics.gossip_rejected.labels(reason=reason).inc()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- zeroconf

    async def _start_zeroconf(self) -> None:
        self._aiozc = AsyncZeroconf(interfaces=list(self.interfaces), ip_version=IPVersion.V4Only)
        fields = {"store": self.store_id, "node": self.node_id, "url": self.url, "proto": PROTOCOL_VERSION}
        fields[SIGNATURE_FIELD] = sign_announcement(self._secret, fields)
        info = AsyncServiceInfo(SERVICE_TYPE, instance_name(self.store_id, self.node_id), port=self.port or 0,
                                properties=fields, parsed_addresses=_ipv4_addresses(self.interfaces))
        # allow_name_change: a clash (say, a restarted node on a network that still caches its old
        # announcement) must not stop discovery; the node id travels in the TXT record, not the name
        announced = await self._aiozc.async_register_service(info, allow_name_change=True)
        await announced
        self._browser = AsyncServiceBrowser(self._aiozc.zeroconf, [SERVICE_TYPE],
                                            handlers=[self._on_service_state_change])

    async def _close_zeroconf(self) -> None:
        browser, aiozc = self._browser, self._aiozc
        self._browser = self._aiozc = None
        if browser is not None:
            await browser.async_cancel()
        if aiozc is not None:
            await aiozc.async_close()  # sends goodbyes for our announcement

    def _on_service_state_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                                 state_change: ServiceStateChange) -> None:
        if self._closed:
            return
        if state_change is ServiceStateChange.Removed:
            self._forget(name)
        else:
            self._spawn(self._resolve(zeroconf, name))

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
            log.debug("announcement %s did not resolve", name)
            return
        self._accept(name, _decode_txt(info.properties))

    def _accept(self, name: str, fields: dict[str, str] | None) -> None:
        # the store and protocol come first, unauthenticated: another store announces with another
        # secret, and counting that as a bad signature would make the metric useless as an alarm
        if fields is None:
            return self._reject(name, "bad_signature")
        if fields.get("store") != self.store_id:
            return self._reject(name, "other_store")
        if fields.get("proto") != PROTOCOL_VERSION:
            return self._reject(name, "protocol")
        if not verify_announcement(self._secret, fields, fields.get(SIGNATURE_FIELD)):
            return self._reject(name, "bad_signature")
        node, url = fields.get("node"), fields.get("url")
        if not node or not url:
            return self._reject(name, "protocol")
        if node == self.node_id:
            return None
        self._forget(name)  # the instance may have announced another node id before
        self._zeroconf_nodes[name] = node
        self._replace("zeroconf", {**self._by_source["zeroconf"], node: Peer(node, url, "zeroconf")})
        return None

    def _forget(self, name: str) -> None:
        node = self._zeroconf_nodes.pop(name, None)
        if node is None or node in self._zeroconf_nodes.values():
            return
        peers = dict(self._by_source["zeroconf"])
        peers.pop(node, None)
        self._replace("zeroconf", peers)

    # ---- dns and etcd

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self.refresh()
            except Exception:  # the loop must outlive any surprise in a source
                log.exception("discovery refresh failed")

    async def _refresh_dns(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._refresh_interval):
                infos = await loop.getaddrinfo(self.dns_name, self.port, family=socket.AF_INET,
                                               type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            log.debug("dns discovery of %s failed: %s", self.dns_name, exc)
            if exc.errno == socket.EAI_NONAME:  # the name has no addresses: e.g. a Service with no pods yet
                self._replace("dns", {})
            return
        except (OSError, TimeoutError) as exc:
            log.debug("dns discovery of %s failed: %r", self.dns_name, exc)
            return
        peers = {}
        for *_, sockaddr in infos:
            ip = sockaddr[0]
            if ip == self._own_host and self.port == self._own_port:
                continue
            key = f"dns:{ip}"
            peers[key] = Peer(key, f"http://{ip}:{self.port}", "dns")
        self._replace("dns", peers)

    async def _refresh_etcd(self) -> None:
        assert self._etcd_members is not None
        try:
            async with asyncio.timeout(self._refresh_interval):
                members = await self._etcd_members()
        except Exception as exc:  # etcd being away is routine; the coordinator reports it
            log.debug("etcd discovery failed: %r", exc)
            return
        self._replace("etcd", {m.node: Peer(m.node, m.url, "etcd") for m in members if m.node != self.node_id})
