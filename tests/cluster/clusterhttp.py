"""Plain HTTP calls and bounded polling for tests that watch node processes from outside."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def call(url: str, method: str = "GET", body=None, timeout: float = 60) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    """The first truthy value of predicate(), polled until `timeout` (the state lives in other processes:
    there is no event to await)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
