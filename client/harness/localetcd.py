"""Start and stop real etcd processes on 127.0.0.1: one member (`EtcdProcess`, used by `evstore dev-cluster`
and the tests) or a small cluster (`EtcdCluster`). Processes are ended by PID, never by name.

A member can serve TLS (`EtcdTls`, e.g. from `make_test_tls`) and enforce authentication with signed JWT
tokens (`jwt_auth_token`); `enable_auth` and `add_prefix_user` set up users and prefix roles through etcd's
JSON gateway, as `etcdctl user add`/`role grant-permission --prefix`/`auth enable` would."""
from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
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


@dataclass(frozen=True)
class EtcdTls:
    """PEM files for an etcd member serving https:// to clients (peers stay on plain loopback)."""
    ca_file: Path
    cert_file: Path
    key_file: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_test_tls(directory: Path) -> EtcdTls:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost (openssl CLI)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
             "-days", "2", "-subj", "/CN=evstore test CA")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=etcd")
    ext = d / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return EtcdTls(ca_file=ca, cert_file=cert, key_file=key)


def jwt_auth_token(directory: Path, ttl: str = "5m") -> str:
    """An `--auth-token` value for signed JWT tokens that expire after `ttl` (an RSA key pair made here):
    unlike etcd's `simple` tokens they cannot be guessed and survive an etcd restart."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    private, public = d / "jwt.key", d / "jwt.pub"
    _openssl("genrsa", "-out", str(private), "2048")
    _openssl("rsa", "-in", str(private), "-pubout", "-out", str(public))
    return f"jwt,pub-key={public},priv-key={private},sign-method=RS256,ttl={ttl}"


class EtcdGatewayError(RuntimeError):
    """etcd's JSON gateway refused a request (its message says why)."""


def _prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with `prefix` (what `--prefix` means to etcdctl)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


class EtcdProcess(LocalProcess):
    """One etcd member. Alone it is a single-member cluster; `EtcdCluster` wires several together through
    `initial_cluster`. Restarts reuse the data dir and ports, so the member keeps its identity and data."""

    def __init__(self, data_dir: Path, name: str = "etcd", client_port: int | None = None,
                 peer_port: int | None = None, initial_cluster: str | None = None,
                 cluster_token: str | None = None, extra_args: tuple[str, ...] = (),
                 new_session: bool = False, tls: EtcdTls | None = None, auth_token: str | None = None) -> None:
        self.binary = etcd_binary()
        self.data_dir = Path(data_dir)
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.cluster_token = cluster_token or f"evstore-{uuid.uuid4().hex}"
        self.extra_args = tuple(extra_args)
        self.new_session = new_session  # own session: a Ctrl-C reaches only the parent, which stops etcd
        self.tls = tls
        self.auth_token = auth_token
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.root_password: str | None = None

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        return [self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.initial_cluster, "--initial-cluster-token", self.cluster_token,
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
                *(("--cert-file", str(self.tls.cert_file), "--key-file", str(self.tls.key_file)) if self.tls else ()),
                *(("--auth-token", self.auth_token) if self.auth_token else ()),
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

    def _ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.tls.ca_file)) if self.tls else None

    def is_ready(self) -> bool:
        """etcd's /health says true once the member has a raft leader."""
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=1, context=self._ssl_context()) as r:
                return r.status == 200 and b'"true"' in r.read()
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    # -- users and roles, through etcd's JSON gateway -------------------------------------------------

    def gateway(self, path: str, body: dict, token: str | None = None) -> dict:
        """POST one etcd v3 JSON gateway request (e.g. "/v3/kv/put"); raises EtcdGatewayError on refusal."""
        request = urllib.request.Request(self.client_url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": token} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=5, context=self._ssl_context()) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise EtcdGatewayError(f"{path}: {e.code} {detail}") from None

    def token(self, user: str, password: str) -> str:
        return self.gateway("/v3/auth/authenticate", {"name": user, "password": password})["token"]

    def _root_token(self) -> str | None:
        return self.token("root", self.root_password) if self.root_password else None

    def add_prefix_user(self, user: str, password: str, prefix: str) -> None:
        """A user whose one role may read and write the keys under `prefix`, and nothing else (leases are
        not keys: any authenticated user may grant them)."""
        token = self._root_token()
        key = prefix.encode()
        self.gateway("/v3/auth/role/add", {"name": user}, token)
        self.gateway("/v3/auth/role/grant", {"name": user, "perm": {
            "permType": "READWRITE", "key": base64.b64encode(key).decode(),
            "range_end": base64.b64encode(_prefix_end(key)).decode()}}, token)
        self.gateway("/v3/auth/user/add", {"name": user, "password": password}, token)
        self.gateway("/v3/auth/user/grant", {"user": user, "role": user}, token)

    def enable_auth(self, root_password: str) -> None:
        """Create `root` (with the root role) and turn authentication on: from here every request needs a
        user. Start the member with `auth_token=jwt_auth_token(...)`, not the default unsigned simple token."""
        self.gateway("/v3/auth/role/add", {"name": "root"})
        self.gateway("/v3/auth/user/add", {"name": "root", "password": root_password})
        self.gateway("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.gateway("/v3/auth/enable", {})
        self.root_password = root_password


class EtcdCluster:
    """`size` etcd members on 127.0.0.1 forming one cluster (data in base_dir/etcd-<i>)."""

    def __init__(self, base_dir: Path, size: int = 3, extra_args: tuple[str, ...] = (),
                 tls: EtcdTls | None = None, auth_token: str | None = None) -> None:
        base_dir = Path(base_dir)
        token = f"evstore-{uuid.uuid4().hex}"
        names = [f"etcd-{i}" for i in range(size)]
        peer_ports = [free_port() for _ in names]
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer_ports))
        # one TLS certificate (for 127.0.0.1) and one JWT key pair serve every member
        self.members = [EtcdProcess(base_dir / n, name=n, peer_port=p, initial_cluster=initial,
                                    cluster_token=token, extra_args=extra_args, tls=tls, auth_token=auth_token)
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
