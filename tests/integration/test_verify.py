"""Flip one byte of a stored event on disk: the offline scan, the admin endpoint and reads all notice."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from evstore.node.verify import verify_data_dir

MARKER = "needle-4c1f0e-payload"


async def _post(session, url, body):
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _flip_byte(db: Path, marker: bytes) -> None:
    blob = bytearray(db.read_bytes())
    at = blob.find(marker)
    assert at >= 0, "the marker must be in the checkpointed database file"
    blob[at + 3] ^= 0x01
    db.write_bytes(bytes(blob))


async def test_one_flipped_byte_is_found_by_verify_and_reads(node):
    async with aiohttp.ClientSession() as session:
        for i in range(20):
            await _post(session, f"{node.url}/v1/streams/v-{i % 3}", {"events": [{"type": "T", "data": {"i": i}}]})
        hit = await _post(session, f"{node.url}/v1/streams/victim", {"events": [{"type": "T", "data": MARKER}]})
        await _post(session, f"{node.url}/v1/streams/v-0", {"events": [{"type": "T", "data": {"after": 1}}]})
    assert node.terminate() == 0  # a clean stop checkpoints the WAL into evstore.db

    assert verify_data_dir(node.data_dir) == {"checked": 22, "corrupt": []}
    _flip_byte(node.data_dir / "evstore.db", MARKER.encode())
    assert verify_data_dir(node.data_dir) == {"checked": 22, "corrupt": [hit["position"]]}

    cli = Path(sys.executable).with_name("evstore")
    out = subprocess.run([str(cli), "--json", "verify", "--data", str(node.data_dir)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout)["corrupt"] == [hit["position"]]

    node.start()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{node.url}/v1/admin/verify") as resp:
            assert resp.status == 200
            assert await resp.json() == {"checked": 22, "corrupt": [hit["position"]]}
        async with session.get(f"{node.url}/v1/streams/victim") as resp:
            body = await resp.json()
            assert resp.status == 503 and body["reason"] == "checksum_mismatch"
            assert body["position"] == hit["position"]
        async with session.get(f"{node.url}/v1/streams/v-1") as resp:  # healthy records still read
            assert resp.status == 200
        async with session.get(f"{node.url}/metrics") as resp:
            text = await resp.text()  # the verify found it once, the read once more
            assert 'evstore_checksum_failures_total{path="verify"} 1.0' in text
            assert 'evstore_checksum_failures_total{path="read"} 1.0' in text
