"""Snapshots in the log on a real SQLite file: latest at or below a version, every snapshot of a source in
version order, replacement at the same version, retention (keep the latest K), delete, listing, and that they
stay out of $all reads unless system streams are asked for."""
from __future__ import annotations

import pytest

from evstore.node.errors import SnapshotNotFound
from evstore.node.log import AllFilter, NewEvent
from evstore.node.storage import DATA_BINARY, METADATA_BINARY


def snap(data: bytes = b'{"n":1}', metadata: bytes = b"{}", flags: int = 0, type_: str = "State") -> NewEvent:
    return NewEvent(b"", type_, data, metadata, given_id=False, flags=flags)


async def test_latest_at_or_below_a_version(log):
    for version in (5, 10, 3):  # saved out of version order
        await log.save_snapshot("order-1", version, snap(b'{"v":%d}' % version))
    assert (await log.read_snapshot("order-1")).data == b'{"v":10}'
    assert (await log.read_snapshot("order-1", 9)).version == 5
    assert (await log.read_snapshot("order-1", 3)).version == 3
    with pytest.raises(SnapshotNotFound):
        await log.read_snapshot("order-1", 2)
    with pytest.raises(SnapshotNotFound):
        await log.read_snapshot("order-2")


async def test_payloads_come_back_exactly_as_saved(log):
    saved = await log.save_snapshot("s", 0, snap(b"\x00\xffstate", b"\x01meta", DATA_BINARY | METADATA_BINARY))
    found = await log.read_snapshot("s")
    assert (found.version, found.data, found.metadata, found.flags) == (0, b"\x00\xffstate", b"\x01meta", 3)
    assert found.position == saved.position
    await log.save_snapshot("t", 1, snap(b'{"big": 123456789012345678901234567890}', b'{"a": 1.50}'))
    found = await log.read_snapshot("t")
    assert (found.data, found.metadata, found.flags) == (b'{"big": 123456789012345678901234567890}', b'{"a": 1.50}', 0)


async def test_every_snapshot_of_a_source_in_version_order_with_bounds_and_pages(log):
    for version in (4, 1, 3, 2, 5):
        await log.save_snapshot("agg", version, snap(b"%d" % version))
    page, nxt = await log.read_snapshots("agg", limit=10)
    assert [s.version for s in page] == [1, 2, 3, 4, 5] and nxt is None
    page, nxt = await log.read_snapshots("agg", min_version=2, max_version=4, limit=10)  # gt=1, lte=4
    assert [s.version for s in page] == [2, 3, 4]
    page, nxt = await log.read_snapshots("agg", backward=True, limit=2)
    assert [s.version for s in page] == [5, 4] and nxt == 3
    page, nxt = await log.read_snapshots("agg", backward=True, max_version=nxt, limit=2)
    assert [s.version for s in page] == [3, 2] and nxt == 1
    page, nxt = await log.read_snapshots("agg", min_version=4, limit=1)
    assert [s.version for s in page] == [4] and nxt == 5
    assert await log.read_snapshots("none", limit=10) == ([], None)


async def test_saving_at_the_same_version_replaces_and_an_identical_save_writes_nothing(log):
    first = await log.save_snapshot("r", 7, snap(b"1"))
    again = await log.save_snapshot("r", 7, snap(b"1"))
    assert again.position == first.position and log.head == first.position
    await log.save_snapshot("r", 7, snap(b"2"))
    assert (await log.read_snapshot("r")).data == b"2"
    page, _ = await log.read_snapshots("r", limit=10)
    assert [(s.version, s.data) for s in page] == [(7, b"2")]


async def test_keep_the_latest_k(log):
    for version in range(1, 6):
        await log.save_snapshot("k", version, snap(), keep=2)
    page, _ = await log.read_snapshots("k", limit=10)
    assert [s.version for s in page] == [4, 5]
    with pytest.raises(SnapshotNotFound):
        await log.read_snapshot("k", 3)
    assert await log.trim_system_streams() == 3  # the hidden ones go for good, on every node alike
    assert [s.version for s in (await log.read_snapshots("k", limit=10))[0]] == [4, 5]


async def test_keep_counts_versions_not_saves(log):
    """A save at a version that has a snapshot replaces it, but left its earlier event in the stream, where keep
    (a maxCount) counted it: with keep 2, replacing v3 left v3 alone and v2 was lost."""
    for version in (1, 2, 3):
        await log.save_snapshot("r", version, snap(b"%d" % version), keep=2)
    await log.save_snapshot("r", 3, snap(b"3 again"))
    await log.save_snapshot("r", 3, snap(b"3 once more"))
    page, _ = await log.read_snapshots("r", limit=10)
    assert [(s.version, s.data) for s in page] == [(2, b"2"), (3, b"3 once more")]
    assert (await log.read_snapshot("r", 2)).data == b"2"
    await log.save_snapshot("r", 4, snap(b"4"))  # a new version: the oldest kept one goes, as keep says
    assert [s.version for s in (await log.read_snapshots("r", limit=10))[0]] == [3, 4]
    await log.trim_system_streams()  # every node removes what is hidden, and no more
    assert [(s.version, s.data) for s in (await log.read_snapshots("r", limit=10))[0]] == [(3, b"3 once more"),
                                                                                          (4, b"4")]


async def test_an_identical_save_with_a_new_keep_keeps_what_it_says(log):
    for version in (3, 4, 5):
        await log.save_snapshot("i", version, snap(b"%d" % version))
    await log.save_snapshot("i", 5, snap(b"5"), keep=2)  # the copy it writes pushed v4 out
    assert [s.version for s in (await log.read_snapshots("i", limit=10))[0]] == [4, 5]
    await log.save_snapshot("j", 5, snap(b"5"))
    await log.save_snapshot("j", 6, snap(b"6"))
    saved = await log.save_snapshot("j", 5, snap(b"5"), keep=1)  # saved last: the one kept, and readable
    assert (await log.read_snapshot("j", 5)).position == saved.position
    assert [s.version for s in (await log.read_snapshots("j", limit=10))[0]] == [5]


async def test_a_delete_ends_the_keep_too(log):
    await log.save_snapshot("d", 1, snap(), keep=1)
    await log.save_snapshot("d", 2, snap())
    await log.delete_snapshots("d")
    await log.save_snapshot("d", 3, snap())
    await log.save_snapshot("d", 4, snap())
    assert [s.version for s in (await log.read_snapshots("d", limit=10))[0]] == [3, 4]


async def test_delete_hides_every_snapshot_and_a_later_save_starts_afresh(log):
    await log.save_snapshot("d", 1, snap())
    await log.save_snapshot("d", 2, snap())
    await log.delete_snapshots("d")
    await log.delete_snapshots("d")  # again, and of a source that never had any: nothing to do
    await log.delete_snapshots("never")
    with pytest.raises(SnapshotNotFound):
        await log.read_snapshot("d")
    assert await log.read_snapshots("d", limit=10) == ([], None)
    await log.save_snapshot("d", 3, snap())
    assert [s.version for s in (await log.read_snapshots("d", limit=10))[0]] == [3]


async def test_listing_sources_by_prefix_and_page(log):
    for source in ("order-1", "order-2", "order-3", "user-1"):
        await log.save_snapshot(source, 1, snap())
        await log.save_snapshot(source, 2, snap(type_="Newer"))
    await log.delete_snapshots("order-2")
    found, nxt = await log.list_snapshots("order-", None, 1)
    assert [(s.source, s.version, s.type) for s in found] == [("order-1", 2, "Newer")] and nxt == "order-1"
    found, nxt = await log.list_snapshots("order-", nxt, 10)
    assert [s.source for s in found] == ["order-3"] and nxt is None
    found, _ = await log.list_snapshots(None, None, 10)
    assert [s.source for s in found] == ["order-1", "order-3", "user-1"]


async def test_snapshots_stay_out_of_all_reads_and_stream_listings(log):
    await log.append("plain", "any", [NewEvent(b"\x01" * 16, "A", b"{}", b"{}")])
    await log.save_snapshot("plain", 1, snap())
    without_system = await log.read_all(limit=10, filters=AllFilter(include_system=False))
    assert [r.stream for r in without_system.records] == ["plain"]
    everything = await log.read_all(limit=10)
    assert [r.stream for r in everything.records] == ["plain", "$snapshot-plain"]
    assert [r.stream for r in (await log.list_streams(None, None, 10))[0]] == ["plain"]
