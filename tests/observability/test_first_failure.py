"""The first failure shows: series that panels and alerts select exist at zero on a fresh node and
operator, and corruption is counted by the path that found it.

Proves: a fresh node's /metrics already has the 503, 500, 409, 404 and 400 series of the append route, the
append results and the checksum failures of every path at 0, with the `method` and `forwarded`
labels; internal routes are not pre-created; the process, GC and volume metrics are there; the operator
pre-creates its reconcile results; a read of a record corrupted in the real SQLite file answers 503 and
moves `evstore_checksum_failures_total{path="read"}` (and verify moves path="verify"), nothing else.
"""
from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from evstore.operator.metrics import OperatorMetrics

MARKER = "needle-0b5ef1-observed"
APPEND = {"method": "POST", "route": "/v1/streams/{stream}", "forwarded": "false"}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def _metrics(session, node) -> dict:
    async with session.get(f"{node.url}/metrics") as resp:
        assert resp.status == 200
        return samples(await resp.text())


async def test_a_fresh_node_exposes_the_failure_series_at_zero(node):
    async with aiohttp.ClientSession() as session:
        found = await _metrics(session, node)
    for status in ("503", "500", "409", "400", "404"):
        assert value(found, "evstore_http_requests_total", **APPEND, status=status) == 0.0, status
    assert value(found, "evstore_http_requests_total", method="GET", route="/v1/streams/{stream}",
                 status="503", forwarded="false") == 0.0
    for path in ("read", "replication", "verify"):
        assert value(found, "evstore_checksum_failures_total", path=path) == 0.0, path
    for result in ("ok", "wrong_expected_version", "unavailable"):
        assert value(found, "evstore_appends_total", result=result) == 0.0, result
    assert not any(name == "evstore_http_requests_total" and dict(labels)["route"].startswith("/v1/internal/")
                   for name, labels in found)
    assert value(found, "evstore_min_in_sync") == 1.0 and value(found, "evstore_ready") == 1.0
    assert value(found, "evstore_volume_total_bytes") > value(found, "evstore_volume_free_bytes") > 0
    assert {"data", "wal"} <= {dict(labels).get("file") for name, labels in found if name == "evstore_storage_file_bytes"}
    assert value(found, "process_open_fds") > 0 and value(found, "process_resident_memory_bytes") > 0
    assert any(name == "python_gc_collections_total" for name, _ in found)


def test_the_operator_exposes_reconcile_results_at_zero():
    metrics = OperatorMetrics()
    for handler in ("reconcile", "delete", "status"):
        assert metrics.registry.get_sample_value("evstore_operator_reconcile_errors_total",
                                                 {"handler": handler}) == 0.0
        for result in ("ok", "retry", "error"):
            assert metrics.registry.get_sample_value("evstore_operator_reconciles_total",
                                                     {"handler": handler, "result": result}) == 0.0


def _flip_byte(db, marker: bytes) -> None:
    blob = bytearray(db.read_bytes())
    at = blob.find(marker)
    assert at >= 0, "the marker must be in the checkpointed database file"
    blob[at + 3] ^= 0x01
    db.write_bytes(bytes(blob))


async def test_a_corrupt_record_found_by_a_read_is_counted_with_path_read(node):
    async with aiohttp.ClientSession() as session:
        for i in range(3):
            async with session.post(f"{node.url}/v1/streams/ok-{i}", json={"events": [{"type": "T", "data": i}]}) as r:
                assert r.status == 200
        async with session.post(f"{node.url}/v1/streams/victim", json={"events": [{"type": "T", "data": MARKER}]}) as r:
            assert r.status == 200
    assert node.terminate() == 0  # a clean stop checkpoints the WAL into evstore.db
    _flip_byte(node.data_dir / "evstore.db", MARKER.encode())
    node.start()
    async with aiohttp.ClientSession() as session:
        before = await _metrics(session, node)
        assert value(before, "evstore_checksum_failures_total", path="read") == 0.0
        async with session.get(f"{node.url}/v1/streams/victim") as resp:
            assert resp.status == 503 and (await resp.json())["reason"] == "checksum_mismatch"
        after = await _metrics(session, node)
        assert value(after, "evstore_checksum_failures_total", path="read") == 1.0
        assert value(after, "evstore_checksum_failures_total", path="verify") == 0.0
        assert value(after, "evstore_http_requests_total", method="GET", route="/v1/streams/{stream}",
                     status="503", forwarded="false") == 1.0
        async with session.post(f"{node.url}/v1/admin/verify") as resp:
            assert len((await resp.json())["corrupt"]) == 1
        found = await _metrics(session, node)
        assert value(found, "evstore_checksum_failures_total", path="verify") == 1.0
        assert value(found, "evstore_checksum_failures_total", path="read") == 1.0
