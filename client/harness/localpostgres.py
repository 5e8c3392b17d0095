"""A throwaway PostgreSQL server on 127.0.0.1 for the benchmarks' reference runs: `initdb` into a temp dir
(as user `postgres` when running as root, which PostgreSQL refuses), default durability settings (fsync on,
synchronous_commit on), trust authentication on loopback only. Ended by PID; its directory is removed."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .localnode import free_port
from .localprocess import LocalProcess

PG_BIN_DIRS = ("/usr/lib/postgresql",)


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries: `apt-get install postgresql` (Debian), or put initdb on PATH."""


def postgres_bin_dir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    for root in PG_BIN_DIRS:  # Debian keeps the server binaries off PATH, one directory per major version
        versions = sorted(Path(root).glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                          if p.parent.parent.name.isdigit() else 0)
        if versions:
            return versions[-1].parent
    raise PostgresNotFound("PostgreSQL is not installed: `apt-get install postgresql` (Debian/Ubuntu), "
                           "or put its bin directory (with initdb) on PATH")


class PostgresProcess(LocalProcess):
    label = "postgres"

    def __init__(self) -> None:
        self.bin = postgres_bin_dir()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="evstore-bench-pg-"))
        self.data_dir = self.temp_dir / "data"
        self.log_path = self.temp_dir / "postgres.log"
        self.port = free_port()
        self.user = "postgres"
        self._as_postgres = os.geteuid() == 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run_as(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else argv

    def start(self, wait: bool = True) -> "PostgresProcess":
        if self._as_postgres:
            shutil.chown(self.temp_dir, "postgres")
        made = subprocess.run(self._run_as([str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                                            "--auth=trust", "-E", "UTF8", "--no-instructions"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
        if made.returncode != 0:  # e.g. user postgres may not enter a private temp dir (TMPDIR)
            raise RuntimeError(f"initdb in {self.data_dir} failed: {made.stderr.strip()[-2000:]}")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self._run_as([str(self.bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                              "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.temp_dir}",
                              "-c", "max_connections=200"]),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        if wait:
            self.wait_ready()
        return self

    def is_ready(self) -> bool:
        try:
            import psycopg
        except ImportError:
            with socket.socket() as s:
                s.settimeout(0.2)
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        try:
            with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                                 connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    @property
    def postmaster_pid(self) -> int:
        """The server's own PID (under runuser, `pid` is runuser's), from the data dir's postmaster.pid."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def setting(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres") as conn:
            return conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster itself: runuser does not pass it on), SIGKILL if it does
        not exit in time; then remove its directory."""
        try:
            if self.running():
                try:
                    postmaster = self.postmaster_pid
                except (OSError, ValueError, IndexError):
                    postmaster = self.proc.pid
                os.kill(postmaster, signal.SIGINT)
                if not _gone(postmaster, 30.0):
                    os.kill(postmaster, signal.SIGKILL)
                    _gone(postmaster, 10.0)
                self.wait_exit(10.0)
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "PostgresProcess":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _gone(pid: int, timeout: float) -> bool:
    """Whether process `pid` has exited within `timeout` seconds (it is not our child under runuser)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)  # polling a process that is not our child: there is nothing to wait on
    return False
