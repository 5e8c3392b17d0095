"""Start and stop real evstore node processes on 127.0.0.1: used by `evstore bench` and the tests (and
a local cluster launcher can build on it). Processes are ended by PID, never by name."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeProcess:
    """One `python -m evstore.node` process. Start, SIGKILL, SIGTERM and restart it on the same data dir."""

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
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)  # polling a port that has no event to await
        raise TimeoutError(f"node on {self.url} not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and wait for the process to be gone."""
        self.signal(signal.SIGKILL)
        self.wait_exit()

    def terminate(self, timeout: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def restart(self) -> "NodeProcess":
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
