"""The node fixes glibc's malloc thresholds (node/app.py tune_allocator), so that a read reply's memory is reused by
the next reply instead of being given back to the system and faulted in again."""
from __future__ import annotations

import subprocess
import sys

import pytest

# Blocks of ~0.5 MB alive at once, then freed, as a read reply, aiohttp's copy of it with the headers and the
# reply of the next request are; in a fresh process glibc gives them back after every round.
ROUNDS = """
import resource, sys
from evstore.node.app import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
page = b"x" * 460_000
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    reply = b"[" + page
    sent = b"HTTP/1.1 200 OK" + reply
    more = reply + b"]"
    del reply, sent, more
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 200)
"""


def faults_per_round(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reply_sized_blocks_are_reused_without_page_faults():
    assert faults_per_round("default") > 50  # what the node saw before: the test can fail
    assert faults_per_round("tuned") < 5
