"""Settings of a node from flags and EVSTORE_* environment variables (flags win), validated at start."""
from __future__ import annotations

import argparse
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .cluster.insync import InSyncFileError, read_min_in_sync

ROLES = ("read", "write", "admin")
LOG_LEVELS = ("debug", "info", "warning", "error")
DURABILITY_MODES = ("sync", "interval")
_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
NODE_ID = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_SECRET_SETTINGS = frozenset({"cluster_secret"})
MIN_BODY_BYTES = 1024
MAX_BODY_BYTES = 1 << 30
MAX_SUBSCRIBERS = 100_000
MAX_CONNECTIONS = 1_000_000
CONNECTIONS_BESIDES_SUBSCRIBERS = 1024  # the default --max-connections leaves room for these

# A store id is a DNS name (labels like _ID joined by '.'), so that the operator can pass
# "<namespace>.<name>", which is unique in a Kubernetes cluster.
STORE_ID = re.compile(rf"^(?=.{{1,253}}$){_ID.pattern[1:-1]}(\.{_ID.pattern[1:-1]})*$")


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag, the variable and what is allowed."""


@dataclass(frozen=True)
class Settings:
    store_id: str = "default"
    node_id: str = field(default_factory=socket.gethostname)
    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 7113
    advertise_url: str = ""
    durability: str = "sync"
    sync_interval: float = 0.2
    max_body_bytes: int = 16 * 1024 * 1024
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    api_tokens_file: Path | None = None
    api_tokens: Mapping[str, str] = field(default_factory=dict)
    cluster_secret: str | None = field(default=None, repr=False)
    etcd_endpoints: tuple[str, ...] = ()
    etcd_ca_file: Path | None = None
    etcd_username: str | None = None
    etcd_password_file: Path | None = None
    etcd_password: str | None = field(default=None, repr=False)
    peer_auth_compat: bool = False
    discovery: tuple[str, ...] = ("zeroconf", "dns", "etcd")
    discovery_interfaces: tuple[str, ...] = ("127.0.0.1",)
    discovery_dns: str | None = None
    min_in_sync: int | None = None
    min_in_sync_file: Path | None = None
    cluster_size: int | None = None
    lease_ttl: float = 5.0
    log_level: str = "info"
    max_subscribers: int = 1000
    max_connections: int = 4096

    @property
    def clustered(self) -> bool:
        return bool(self.etcd_endpoints)

    @property
    def url(self) -> str:
        return self.advertise_url or f"http://{self.host}:{self.port}"


# (attribute, flag, variable, help)
OPTIONS = [
    ("store_id", "--store-id", "EVSTORE_STORE_ID", "store identifier (lower-case DNS name), default 'default'"),
    ("node_id", "--node-id", "EVSTORE_NODE_ID", "node identifier, default the host name"),
    ("data_dir", "--data-dir", "EVSTORE_DATA_DIR", "directory of the log, default ./data"),
    ("host", "--host", "EVSTORE_HOST", "address to listen on, default 127.0.0.1"),
    ("port", "--port", "EVSTORE_PORT", "port to listen on, default 7113"),
    ("advertise_url", "--advertise-url", "EVSTORE_ADVERTISE_URL", "URL peers and clients use, default http://HOST:PORT"),
    ("durability", "--durability", "EVSTORE_DURABILITY", "sync (reply after fsync, default) or interval"),
    ("sync_interval", "--sync-interval", "EVSTORE_SYNC_INTERVAL", "seconds between syncs with durability interval"),
    ("max_body_bytes", "--max-body-bytes", "EVSTORE_MAX_BODY_BYTES", "largest request body, default 16 MiB"),
    ("body_timeout", "--body-timeout", "EVSTORE_BODY_TIMEOUT",
     "seconds a request body may take to arrive (then 408), default 60"),
    ("keepalive_timeout", "--keepalive-timeout", "EVSTORE_KEEPALIVE_TIMEOUT",
     "seconds an idle keep-alive connection stays open, default 75"),
    ("api_tokens_file", "--api-tokens-file", "EVSTORE_API_TOKENS_FILE", "file of 'TOKEN ROLE' lines; none = open"),
    ("cluster_secret", "--cluster-secret", "EVSTORE_CLUSTER_SECRET", "shared secret of the cluster's nodes"),
    ("cluster_secret_file", "--cluster-secret-file", "EVSTORE_CLUSTER_SECRET_FILE",
     "file holding the cluster secret (instead of --cluster-secret: kept out of the environment)"),
    ("etcd_endpoints", "--etcd-endpoints", "EVSTORE_ETCD_ENDPOINTS",
     "comma-separated etcd URLs (all http:// or all https://); none = single node"),
    ("etcd_ca_file", "--etcd-ca-file", "EVSTORE_ETCD_CA_FILE", "PEM CA bundle for https:// etcd endpoints"),
    ("etcd_username", "--etcd-username", "EVSTORE_ETCD_USERNAME", "etcd user (needs --etcd-password-file)"),
    ("etcd_password_file", "--etcd-password-file", "EVSTORE_ETCD_PASSWORD_FILE",
     "file holding the etcd user's password"),
    ("peer_auth_compat", "--peer-auth-compat", "EVSTORE_PEER_AUTH_COMPAT",
     "true only during a rolling upgrade from a version with static peer tokens; default false"),
    ("discovery", "--discovery", "EVSTORE_DISCOVERY", "discovery methods, default zeroconf,dns,etcd"),
    ("discovery_interfaces", "--discovery-interfaces", "EVSTORE_DISCOVERY_INTERFACES",
     "addresses zeroconf binds to, default 127.0.0.1"),
    ("discovery_dns", "--discovery-dns", "EVSTORE_DISCOVERY_DNS", "DNS name listing the peers (headless Service)"),
    ("min_in_sync", "--min-in-sync", "EVSTORE_MIN_IN_SYNC", "in-sync replicas needed to acknowledge, default majority"),
    ("min_in_sync_file", "--min-in-sync-file", "EVSTORE_MIN_IN_SYNC_FILE",
     "file holding min-in-sync as a number, re-read every second (the operator's ConfigMap)"),
    ("cluster_size", "--cluster-size", "EVSTORE_CLUSTER_SIZE",
     "number of nodes the store is meant to have; the default min-in-sync is its majority"),
    ("lease_ttl", "--lease-ttl", "EVSTORE_LEASE_TTL", "seconds of the etcd lease (failover time), default 5"),
    ("log_level", "--log-level", "EVSTORE_LOG_LEVEL", "debug, info, warning or error"),
    ("max_subscribers", "--max-subscribers", "EVSTORE_MAX_SUBSCRIBERS",
     "transient subscribers this node serves at once (more get 503), default 1000"),
    ("max_connections", "--max-connections", "EVSTORE_MAX_CONNECTIONS",
     "HTTP connections this node keeps open at once (more get 503), at least --max-subscribers; default 4096, "
     "or --max-subscribers + 1024 when that is more"),
]


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evstore serve", description="Run one evstore node.")
    for attr, flag, variable, help_text in OPTIONS:
        if attr == "peer_auth_compat":  # a switch: `--peer-auth-compat` alone means true
            parser.add_argument(flag, dest=attr, default=None, nargs="?", const="true",
                                help=f"{help_text} [{variable}]")
        else:
            parser.add_argument(flag, dest=attr, default=None, help=f"{help_text} [{variable}]")
    return parser


def load_settings(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Settings:
    """Flags win over variables, variables over defaults. Raises ConfigError on any invalid value."""
    environ = os.environ if environ is None else environ
    args = argument_parser().parse_args(list(argv))
    raw: dict[str, tuple[str, str]] = {}
    for attr, flag, variable, _help in OPTIONS:
        value = getattr(args, attr)
        if value is not None:
            raw[attr] = (value, flag)
        elif environ.get(variable, "") != "":
            raw[attr] = (environ[variable], variable)
    return _validate(raw)


def _validate(raw: dict[str, tuple[str, str]]) -> Settings:
    values: dict = {}

    def get(attr: str) -> str | None:
        return raw[attr][0].strip() if attr in raw else None

    def fail(attr: str, what: str) -> ConfigError:
        if attr in _SECRET_SETTINGS:  # never echo a secret, not even a wrong one
            return ConfigError(f"{raw[attr][1]}: {what}")
        return ConfigError(f"{raw[attr][1]}={raw[attr][0]!r}: {what}")

    def integer(attr: str, low: int, high: int) -> int | None:
        text = get(attr)
        if text is None:
            return None
        if not text.isdigit() or not low <= int(text) <= high:
            raise fail(attr, f"must be an integer from {low} to {high}")
        return int(text)

    def seconds(attr: str, low: float, high: float) -> float | None:
        text = get(attr)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not low <= value <= high:
            raise fail(attr, f"must be a number of seconds from {low:g} to {high:g}")
        return value

    def csv(attr: str) -> tuple[str, ...] | None:
        text = get(attr)
        return None if text is None else tuple(p.strip() for p in text.split(",") if p.strip())

    if (store := get("store_id")) is not None:
        if not STORE_ID.match(store):
            raise fail("store_id", "must be a lower-case DNS name: DNS labels (a-z, 0-9, '-', at most 63 "
                       "characters) joined by '.', at most 253 characters")
        values["store_id"] = store
    if (node := get("node_id")) is not None:
        if not NODE_ID.match(node):
            raise fail("node_id", "must be letters, digits, '.', '_' or '-' (at most 253 characters)")
        values["node_id"] = node
    if (data_dir := get("data_dir")) is not None:
        values["data_dir"] = Path(data_dir)
    if (host := get("host")) is not None:
        values["host"] = host
    if (port := integer("port", 1, 65535)) is not None:
        values["port"] = port
    if (url := get("advertise_url")) is not None:
        if not re.match(r"^https?://[^/\s]+$", url):
            raise fail("advertise_url", "must be http(s)://HOST[:PORT] with no path")
        values["advertise_url"] = url
    if (durability := get("durability")) is not None:
        if durability not in DURABILITY_MODES:
            raise fail("durability", f"must be one of {', '.join(DURABILITY_MODES)}")
        values["durability"] = durability
    if (interval := seconds("sync_interval", 0.001, 60)) is not None:
        values["sync_interval"] = interval
    if (body := integer("max_body_bytes", MIN_BODY_BYTES, MAX_BODY_BYTES)) is not None:
        values["max_body_bytes"] = body
    for timeout in ("body_timeout", "keepalive_timeout"):
        if (limit := seconds(timeout, 0.1, 3600)) is not None:
            values[timeout] = limit
    if (tokens_file := get("api_tokens_file")) is not None:
        values["api_tokens_file"] = Path(tokens_file)
        values["api_tokens"] = _read_tokens(Path(tokens_file), raw["api_tokens_file"][1])
    if (secret := get("cluster_secret")) is not None:
        if len(secret) < 16:
            raise fail("cluster_secret", "must be at least 16 characters")
        values["cluster_secret"] = secret
    if (secret_file := get("cluster_secret_file")) is not None:
        if secret is not None:
            raise ConfigError(f"give {raw['cluster_secret'][1]} or {raw['cluster_secret_file'][1]}, not both")
        # stripped as a value from the environment is: the pods of a roll from one to the other must agree
        secret = _read_secret_file(Path(secret_file), raw["cluster_secret_file"][1]).strip()
        if len(secret) < 16:
            raise fail("cluster_secret_file", "the secret in it must be at least 16 characters")
        values["cluster_secret"] = secret
    if (endpoints := csv("etcd_endpoints")) is not None:
        values["etcd_endpoints"] = endpoints
    if (discovery := csv("discovery")) is not None:
        unknown = set(discovery) - {"zeroconf", "dns", "etcd"}
        if unknown:
            raise fail("discovery", "methods are zeroconf, dns and etcd")
        values["discovery"] = discovery
    if (interfaces := csv("discovery_interfaces")) is not None:
        if not interfaces:
            raise fail("discovery_interfaces", "name at least one address")
        values["discovery_interfaces"] = interfaces
    if (dns := get("discovery_dns")) is not None:
        values["discovery_dns"] = dns
    if (min_isr := integer("min_in_sync", 1, 9)) is not None:
        values["min_in_sync"] = min_isr
    if (in_sync_file := get("min_in_sync_file")) is not None:
        if "min_in_sync" in values:
            raise ConfigError("set either --min-in-sync or --min-in-sync-file (EVSTORE_MIN_IN_SYNC, "
                              "EVSTORE_MIN_IN_SYNC_FILE), not both")
        try:
            read_min_in_sync(Path(in_sync_file))
        except InSyncFileError as exc:
            raise fail("min_in_sync_file", str(exc)) from None
        values["min_in_sync_file"] = Path(in_sync_file)
    if (level := get("log_level")) is not None:
        if level.lower() not in LOG_LEVELS:
            raise fail("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        values["log_level"] = level.lower()
    if (size := integer("cluster_size", 1, 9)) is not None:
        values["cluster_size"] = size
    if (ttl := seconds("lease_ttl", 2, 60)) is not None:
        values["lease_ttl"] = ttl
    if (subscribers := integer("max_subscribers", 1, MAX_SUBSCRIBERS)) is not None:
        values["max_subscribers"] = subscribers
    subscribers = values.get("max_subscribers", Settings.max_subscribers)
    if (connections := integer("max_connections", 1, MAX_CONNECTIONS)) is not None:
        if connections < subscribers:
            raise fail("max_connections", f"must be at least --max-subscribers ({subscribers}): each subscriber "
                                          "holds a connection")
        values["max_connections"] = connections
    else:  # room for every subscriber and as many other connections as without them
        values["max_connections"] = max(Settings.max_connections, subscribers + CONNECTIONS_BESIDES_SUBSCRIBERS)
    for url in values.get("etcd_endpoints", ()):
        if not re.match(r"^https?://[^/\s]+$", url):
            raise fail("etcd_endpoints", "must be comma-separated http://HOST:PORT or https://HOST:PORT URLs")
    if len({url.split("://")[0] for url in values.get("etcd_endpoints", ())}) > 1:
        raise fail("etcd_endpoints", "must be all http:// or all https://")
    if (ca_file := get("etcd_ca_file")) is not None:
        path = Path(ca_file)
        if not path.is_file():
            raise fail("etcd_ca_file", "is not a readable file")
        if not any(url.startswith("https://") for url in values.get("etcd_endpoints", ())):
            raise fail("etcd_ca_file", "is for https:// etcd endpoints only")
        values["etcd_ca_file"] = path
    if (username := get("etcd_username")) is not None:
        if not username or len(username) > 128:
            raise fail("etcd_username", "must be 1 to 128 characters")
        values["etcd_username"] = username
    if (password_file := get("etcd_password_file")) is not None:
        values["etcd_password_file"] = Path(password_file)
        values["etcd_password"] = _read_secret_file(Path(password_file), raw["etcd_password_file"][1])
    if ("etcd_username" in values) != ("etcd_password" in values):
        raise ConfigError("an etcd username and an etcd password file go together: set both --etcd-username "
                          "and --etcd-password-file (EVSTORE_ETCD_USERNAME, EVSTORE_ETCD_PASSWORD_FILE) or neither")
    if (compat := get("peer_auth_compat")) is not None:
        if compat.lower() not in _BOOLEANS:
            raise fail("peer_auth_compat", "must be true or false")
        values["peer_auth_compat"] = _BOOLEANS[compat.lower()]
    if values.get("etcd_endpoints") and not values.get("cluster_secret"):
        raise ConfigError("etcd endpoints are set (a cluster), so a cluster secret is required: set "
                          "EVSTORE_CLUSTER_SECRET or --cluster-secret (at least 16 characters)")
    if values.get("min_in_sync") and values.get("cluster_size") and values["min_in_sync"] > values["cluster_size"]:
        raise ConfigError(f"min in sync ({values['min_in_sync']}) is larger than the cluster size "
                          f"({values['cluster_size']}): no write could ever be acknowledged")
    return Settings(**values)


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _read_secret_file(path: Path, source: str) -> str:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{source}={str(path)!r}: cannot read: {reason}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"{source}={str(path)!r}: the file is empty")
    return secret


def _read_tokens(path: Path, source: str) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{source}={str(path)!r}: cannot read: {exc.strerror}") from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ROLES or len(parts[0]) < 16:
            raise ConfigError(f"{path}:{number}: expected 'TOKEN ROLE' with a token of at least 16 characters and "
                              f"a role of {', '.join(ROLES)}")
        if tokens.get(parts[0], parts[1]) != parts[1]:  # which role has it? (the line holds a secret: not quoted)
            raise ConfigError(f"{path}:{number}: a token of an earlier line again, with another role; give each "
                              f"token one role")
        tokens[parts[0]] = parts[1]
    if not tokens:
        raise ConfigError(f"{path}: no tokens (remove the setting to run an open node)")
    return tokens
