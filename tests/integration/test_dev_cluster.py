"""`evstore dev-cluster` as a user runs it: one command starts etcd and three nodes, prints their URLs,
serves writes, and Ctrl-C (SIGINT) stops everything."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

EVSTORE = str(Path(sys.executable).with_name("evstore"))


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """The lines the command printed until `marker` (bounded: the command is killed on timeout)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"no {marker!r} within {timeout}s; printed: {''.join(seen)}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dev_cluster_starts_serves_and_stops_on_ctrl_c(tmp_path):
    proc = subprocess.Popen([EVSTORE, "dev-cluster", "--nodes", "3", "--dir", str(tmp_path / "dev")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children: list[int] = []
    try:
        printed = read_until(proc, "Ctrl-C stops the cluster", 90)
        urls = re.findall(r"^node\d:\s+(http://127\.0\.0\.1:\d+)$", printed, re.M)
        assert len(urls) == 3, printed
        assert re.search(r"^leader: node\d \(epoch \d+\)$", printed, re.M), printed
        request = urllib.request.Request(urls[2] + "/v1/streams/dev-1", method="POST", data=json.dumps(
            {"events": [{"type": "Tried", "data": {}}]}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert json.loads(reply.read())["version"] == 1
        for url in urls:
            with urllib.request.urlopen(url + "/v1/cluster", timeout=10) as reply:
                assert json.loads(reply.read())["role"] in ("leader", "follower")
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                   text=True).stdout.split()]
        assert len(children) == 4  # etcd and three nodes
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, rest
        assert "stopped" in rest
        assert not [pid for pid in children if pid_alive(pid)]
    finally:
        if proc.poll() is None:
            # its children run in their own sessions: learn their PIDs before the parent goes
            children += [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                        text=True).stdout.split()]
            proc.send_signal(signal.SIGINT)  # it stops what it started
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in set(children):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
