"""What every process this program starts on 127.0.0.1 shares: its output in a log file, a bounded wait
until it answers, and ending it by PID (never by name)."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

START_TIMEOUT = 30.0


class LocalProcess:
    """Subclasses set `proc` in `start()`, and say how to tell that the process is ready (`is_ready`)."""

    proc: subprocess.Popen | None = None
    log_path: Path
    label = "process"  # names it in messages

    @property
    def address(self) -> str:
        raise NotImplementedError

    def start(self, wait: bool = True) -> "LocalProcess":
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll until it is ready; raise when the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"{self.label} exited with {code}: {self.log()}")
            if self.is_ready():
                return
            time.sleep(0.05)  # polling a port that has no event to await
        raise TimeoutError(f"{self.label} on {self.address} not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.running():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL and wait until the PID is gone."""
        self.signal(signal.SIGKILL)
        self.wait_exit()

    def terminate(self, timeout: float = 20.0) -> int | None:
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def restart(self, wait: bool = True) -> "LocalProcess":
        """Start again with the same data and ports, once the previous process (if any) has exited."""
        if self.running():
            self.kill()
        self.wait_exit()
        return self.start(wait=wait)

    def stop(self) -> None:
        if self.running():
            self.proc.kill()
        self.wait_exit(10)

    def __enter__(self) -> "LocalProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
