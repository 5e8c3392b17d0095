"""/v1/snapshots over real HTTP against a real node, and the client's snapshot methods."""
from __future__ import annotations

import base64
import uuid

import aiohttp
import pytest

from evstore.client import AsyncEvstoreClient, EvstoreClient, SnapshotNotFound

from httphelpers import call


@pytest.fixture(scope="module")
def url(shared_node):
    return shared_node.url


@pytest.fixture
async def http(url):
    async with aiohttp.ClientSession(base_url=url) as session:
        yield session


def name(prefix: str = "agg") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def head(http) -> int:
    return (await call(http, "GET", "/v1/all", params={"limit": "1", "includeSystem": "true"}))[1]["head"]


async def test_put_then_get_the_latest_at_or_below_a_version(http):
    source = name("order")
    for version in (3, 10, 6):
        status, reply = await call(http, "PUT", f"/v1/snapshots/{source}",
                                   json={"version": version, "type": "OrderState", "data": {"v": version},
                                         "metadata": {"by": "test"}})
        assert status == 200 and (reply["source"], reply["version"]) == (source, version)
    status, latest = await call(http, "GET", f"/v1/snapshots/{source}")
    assert status == 200
    assert {k: latest[k] for k in ("source", "version", "type", "data", "metadata")} == {
        "source": source, "version": 10, "type": "OrderState", "data": {"v": 10}, "metadata": {"by": "test"}}
    assert latest["created"].endswith("Z") and isinstance(latest["position"], int)
    status, below = await call(http, "GET", f"/v1/snapshots/{source}", params={"maxVersion": "9"})
    assert status == 200 and below["version"] == 6
    status, reply = await call(http, "GET", f"/v1/snapshots/{source}", params={"maxVersion": "2"})
    assert status == 404 and reply["error"] == "snapshot_not_found"
    status, reply = await call(http, "GET", f"/v1/snapshots/{name('none')}")
    assert status == 404 and reply["error"] == "snapshot_not_found"


async def test_binary_and_exact_payloads(http):
    source = name("bin")
    state = base64.b64encode(b"\x00state\xff").decode()
    status, _ = await call(http, "PUT", f"/v1/snapshots/{source}",
                           json={"version": 0, "type": "S", "dataBase64": state, "metadataBase64": "AQI="})
    assert status == 200
    snapshot = (await call(http, "GET", f"/v1/snapshots/{source}"))[1]
    assert (snapshot["dataBase64"], snapshot["metadataBase64"], snapshot["version"]) == (state, "AQI=", 0)
    assert "data" not in snapshot and "metadata" not in snapshot
    exact = b'{"version": 1, "type": "S", "data": {"n": 123456789012345678901234567890, "d": 1.50}}'
    status, _ = await call(http, "PUT", f"/v1/snapshots/{source}", data=exact,
                           headers={"Content-Type": "application/json"})
    async with http.get(f"/v1/snapshots/{source}") as resp:
        assert b'"data":{"n": 123456789012345678901234567890, "d": 1.50}' in await resp.read()


async def test_every_snapshot_of_a_source_in_version_order_and_pages(http):
    source = name()
    for version in (2, 0, 4, 1, 3):
        await call(http, "PUT", f"/v1/snapshots/{source}", json={"version": version, "type": "S", "data": version})
    status, page = await call(http, "GET", f"/v1/snapshots/{source}/all")
    assert status == 200 and [s["version"] for s in page["snapshots"]] == [0, 1, 2, 3, 4] and page["next"] is None
    # eventsourcing's select_events(gt=0, lte=3, desc=True, limit=2)
    status, page = await call(http, "GET", f"/v1/snapshots/{source}/all",
                              params={"minVersion": "1", "maxVersion": "3", "direction": "backward", "limit": "2"})
    assert [s["data"] for s in page["snapshots"]] == [3, 2] and page["next"] == 1
    status, page = await call(http, "GET", f"/v1/snapshots/{source}/all",
                              params={"minVersion": "1", "maxVersion": str(page["next"]), "direction": "backward"})
    assert [s["version"] for s in page["snapshots"]] == [1] and page["next"] is None
    status, page = await call(http, "GET", f"/v1/snapshots/{name()}/all")
    assert (status, page["snapshots"], page["next"]) == (200, [], None)


async def test_retention_keeps_the_latest_k(http):
    source = name("keep")
    for version in range(1, 6):
        await call(http, "PUT", f"/v1/snapshots/{source}", json={"version": version, "type": "S", "keep": 2})
    page = (await call(http, "GET", f"/v1/snapshots/{source}/all"))[1]
    assert [s["version"] for s in page["snapshots"]] == [4, 5]


async def test_a_higher_keep_later_does_not_bring_back_what_a_lower_one_dropped(http):
    source = name("rekeep")
    for version, keep in ((1, None), (2, None), (3, 1), (4, 5), (5, None)):
        await call(http, "PUT", f"/v1/snapshots/{source}",
                   json={"version": version, "type": "S", **({"keep": keep} if keep else {})})
        page = (await call(http, "GET", f"/v1/snapshots/{source}/all"))[1]
    assert [s["version"] for s in page["snapshots"]] == [3, 4, 5]  # 1 and 2 stay dropped; 5 kept of 5
    assert (await call(http, "GET", f"/v1/snapshots/{source}", params={"maxVersion": "2"}))[0] == 404


async def test_same_version_replaces_and_an_identical_put_writes_nothing(http):
    source = name("same")
    body = {"version": 5, "type": "S", "data": {"a": 1}}
    first = await call(http, "PUT", f"/v1/snapshots/{source}", json=body)
    before = await head(http)
    assert await call(http, "PUT", f"/v1/snapshots/{source}", json=body) == first
    assert await head(http) == before
    await call(http, "PUT", f"/v1/snapshots/{source}", json={**body, "data": {"a": 2}})
    page = (await call(http, "GET", f"/v1/snapshots/{source}/all"))[1]
    assert [(s["version"], s["data"]) for s in page["snapshots"]] == [(5, {"a": 2})]


async def test_delete_and_list(http):
    prefix = name("lst")
    for source in ("a", "b", "c"):
        await call(http, "PUT", f"/v1/snapshots/{prefix}-{source}", json={"version": 1, "type": "S", "data": 1})
    assert (await call(http, "DELETE", f"/v1/snapshots/{prefix}-b"))[0] == 204
    assert (await call(http, "DELETE", f"/v1/snapshots/{prefix}-b"))[0] == 204
    assert (await call(http, "GET", f"/v1/snapshots/{prefix}-b"))[0] == 404
    status, page = await call(http, "GET", "/v1/snapshots", params={"prefix": prefix, "limit": "1"})
    assert status == 200 and [s["source"] for s in page["snapshots"]] == [f"{prefix}-a"]
    assert page["next"] == f"{prefix}-a" and "data" not in page["snapshots"][0]
    status, page = await call(http, "GET", "/v1/snapshots", params={"prefix": prefix, "after": page["next"]})
    assert [s["source"] for s in page["snapshots"]] == [f"{prefix}-c"] and page["next"] is None


async def test_snapshots_are_not_in_all_reads_unless_system_streams_are_asked_for(http):
    source = name("hidden")
    status, saved = await call(http, "PUT", f"/v1/snapshots/{source}", json={"version": 1, "type": "S"})
    position = saved["position"]
    page = (await call(http, "GET", "/v1/all", params={"from": str(position)}))[1]
    assert all(e["position"] != position for e in page["events"])
    page = (await call(http, "GET", "/v1/all", params={"from": str(position), "includeSystem": "true"}))[1]
    assert page["events"][0]["stream"] == f"$snapshot-{source}"
    assert (await call(http, "POST", f"/v1/streams/$snapshot-{source}", json={"events": [{"type": "X"}]}))[0] == 400


@pytest.mark.parametrize("method, path, kwargs, field", [
    ("PUT", "/v1/snapshots/s", {"json": {"type": "S"}}, "version"),
    ("PUT", "/v1/snapshots/s", {"json": {"version": -1, "type": "S"}}, "version"),
    ("PUT", "/v1/snapshots/s", {"json": {"version": True, "type": "S"}}, "version"),
    ("PUT", "/v1/snapshots/s", {"json": {"version": 1}}, "type"),
    ("PUT", "/v1/snapshots/s", {"json": {"version": 1, "type": "S", "data": 1, "dataBase64": "AA=="}}, "dataBase64"),
    ("PUT", "/v1/snapshots/s", {"json": {"version": 1, "type": "S", "dataBase64": "!"}}, "dataBase64"),
    ("PUT", "/v1/snapshots/s", {"json": {"version": 1, "type": "S", "metadata": []}}, "metadata"),
    ("PUT", "/v1/snapshots/s", {"json": {"version": 1, "type": "S", "keep": 0}}, "keep"),
    ("PUT", "/v1/snapshots/s", {"json": {"version": 1, "type": "S", "other": 0}}, "other"),
    ("PUT", "/v1/snapshots/s", {"json": [1]}, "body"),
    ("PUT", "/v1/snapshots/" + "x" * 503, {"json": {"version": 1, "type": "S"}}, "source"),
    ("GET", "/v1/snapshots/s", {"params": {"maxVersion": "-1"}}, "maxVersion"),
    ("GET", "/v1/snapshots/s", {"params": {"bogus": "1"}}, "bogus"),
    ("GET", "/v1/snapshots/s/all", {"params": {"limit": "0"}}, "limit"),
    ("GET", "/v1/snapshots/s/all", {"params": {"direction": "up"}}, "direction"),
    ("GET", "/v1/snapshots", {"params": {"limit": "1001"}}, "limit"),
    ("DELETE", "/v1/snapshots/s", {"params": {"hard": "true"}}, "hard"),
])
async def test_bad_requests_are_400s_and_write_nothing(http, method, path, kwargs, field):
    before = await head(http)
    status, reply = await call(http, method, path, **kwargs)
    assert (status, reply["error"], reply.get("field")) == (400, "invalid_request", field), reply
    assert await head(http) == before


async def test_the_async_and_sync_clients(url):
    source = name("client")
    async with AsyncEvstoreClient(url, timeout=10) as client:
        saved = await client.save_snapshot(source, version=1, type="S", data=b"\x00raw", metadata={"m": 1})
        assert saved["version"] == 1
        await client.save_snapshot(source, version=2, type="S", data={"json": True}, keep=10)
        assert (await client.read_snapshot(source, max_version=1))["dataBase64"] == "AHJhdw=="
        assert (await client.read_snapshot(source))["data"] == {"json": True}
        assert [s["version"] async for s in client.iter_snapshots(source, backward=True, page_size=1)] == [2, 1]
        page = await client.read_snapshots(source, min_version=2)
        assert [s["version"] for s in page["snapshots"]] == [2]
        assert [s["source"] for s in (await client.list_snapshots(prefix=source))["snapshots"]] == [source]
    with EvstoreClient(url, timeout=10) as client:
        assert client.read_snapshot(source)["version"] == 2
        assert [s["version"] for s in client.iter_snapshots(source)] == [1, 2]
        client.delete_snapshot(source)
        with pytest.raises(SnapshotNotFound):
            client.read_snapshot(source)


def test_the_cli_puts_gets_lists_and_deletes_snapshots(url, tmp_path):
    import json

    from click.testing import CliRunner

    from evstore.client.cli import cli

    runner = CliRunner()

    def run(*args: str, input: str | bytes | None = None):
        result = runner.invoke(cli, ["--url", url, *args], input=input)
        assert result.exit_code == 0, result.output
        return result.output

    source = name("cli")
    assert "version 3" in run("snapshot", "put", source, "--version", "3", "--type", "S", "--data", '{"a": 1}',
                              "--metadata", '{"m": true}')
    (tmp_path / "state.bin").write_bytes(b"\x00\x01bin")
    run("snapshot", "put", source, "--version", "5", "--type", "S", "--data-file", str(tmp_path / "state.bin"),
        "--keep", "10")
    assert json.loads(run("snapshot", "get", source, "--json"))["dataBase64"] == "AAFiaW4="
    assert json.loads(run("snapshot", "get", source, "--max-version", "4", "--json"))["data"] == {"a": 1}
    assert "version:" in run("snapshot", "get", source)
    table = run("snapshot", "get", source, "--all")
    assert table.splitlines()[0].split()[:2] == ["VERSION", "TYPE"] and len(table.splitlines()) == 3
    assert source in run("snapshot", "list", "--prefix", source)
    assert "deleted" in run("snapshot", "delete", source)
    missing = runner.invoke(cli, ["--url", url, "snapshot", "get", source])
    assert missing.exit_code == 1 and "snapshot_not_found" in missing.output


async def test_a_source_with_a_slash_is_one_path_segment(url):
    source = name("a/all")
    async with AsyncEvstoreClient(url, timeout=10) as client:
        await client.save_snapshot(source, version=1, type="S", data=1)
        assert (await client.read_snapshot(source))["source"] == source
        assert [s["source"] for s in (await client.read_snapshots(source))["snapshots"]] == [source]
        with pytest.raises(SnapshotNotFound):
            await client.read_snapshot(source.split("/")[0])


def test_the_openapi_limits_are_the_parser_limits():
    from evstore.node.api import validation as v
    from evstore.node.api.openapi import document

    schemas = document()["components"]["schemas"]
    appends = schemas["MultiAppendRequest"]["properties"]["appends"]
    assert (appends["minItems"], appends["maxItems"]) == (1, v.MAX_APPEND_ENTRIES)
    assert schemas["StreamAppend"]["properties"]["events"]["maxItems"] == v.MAX_EVENTS_PER_APPEND
    assert schemas["SnapshotRequest"]["additionalProperties"] is False
    source = document()["paths"]["/v1/snapshots/{source}"]["get"]["parameters"][0]
    assert source["schema"]["maxLength"] == v.MAX_SOURCE_BYTES == 512 - len("$snapshot-")


async def test_a_save_refuses_query_parameters_it_would_ignore(http):
    source = name()
    status, reply = await call(http, "PUT", f"/v1/snapshots/{source}?keep=1",
                               json={"version": 1, "type": "S", "data": {}})
    assert (status, reply["error"], reply["field"]) == (400, "invalid_request", "keep"), reply
    assert (await call(http, "GET", f"/v1/snapshots/{source}"))[0] == 404
