"""Start and stop real evstore node processes on 127.0.0.1: used by `evstore bench` and the tests (and
a local cluster launcher can build on it). Processes are ended by PID, never by name."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .localprocess import LocalProcess


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeProcess(LocalProcess):
    """One `python -m evstore.node` process. Start, SIGKILL, SIGTERM and restart it on the same data dir."""

    label = "node"

    def __init__(self, data_dir: Path, port: int | None = None, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, new_session: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.args = tuple(args)
        self.env = env or {}
        self.new_session = new_session  # own session: a Ctrl-C reaches only the parent, which stops the node
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"node-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    address = url

    def command(self) -> list[str]:
        return [sys.executable, "-m", "evstore.node", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir), *self.args]

    def start(self, wait: bool = True) -> "NodeProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVSTORE_")}
        env.update(self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.data_dir.parent, start_new_session=self.new_session)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())
