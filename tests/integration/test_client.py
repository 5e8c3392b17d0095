"""The Python client against a real node process on 127.0.0.1 (one node per module, unique stream names).
The blocking client's own transport (client/blocking.py) is tested at the end."""
from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
import uuid

import aiohttp
import pytest
from aiohttp import web

from evstore.client import (AsyncEvstoreClient, DuplicateEventId, EvstoreClient, Forbidden, InvalidRequest,
                            NewEvent, ReservedStream, StreamDeleted, StreamNotFound, Unauthorized, Unavailable,
                            WrongExpectedVersion)
from evstore.client.blocking import complete
from evstore.client.errors import ConnectionFailed


@pytest.fixture
async def client(shared_node):
    async with AsyncEvstoreClient(shared_node.url, timeout=10) as c:
        yield c


def unique(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def events(n: int, type_: str = "Happened") -> list[dict]:
    return [{"type": type_, "data": {"n": i}} for i in range(n)]


# -- streams ------------------------------------------------------------------------------------

async def test_append_then_read_forward_backward_and_paged(client):
    stream = unique("order")
    reply = await client.append(stream, [*events(3), NewEvent("Closed", {"ok": True}, {"by": "test"})],
                                expected_version="no_stream")
    assert reply["stream"] == stream
    assert (reply["fromVersion"], reply["version"]) == (1, 4)

    page = await client.read_stream(stream)
    assert page["version"] == 4 and page["next"] is None
    assert [e["version"] for e in page["events"]] == [1, 2, 3, 4]
    assert [e["data"] for e in page["events"][:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert page["events"][3]["metadata"] == {"by": "test"}
    assert page["events"][3]["position"] == reply["position"]
    assert all(uuid.UUID(e["id"]) for e in page["events"]), "the client gave every event an id"

    backward = await client.read_stream(stream, backward=True, limit=2)
    assert [e["version"] for e in backward["events"]] == [4, 3]

    first = await client.read_stream(stream, limit=3)
    assert first["next"] == 4
    assert [e["version"] async for e in client.iter_stream(stream, page_size=3)] == [1, 2, 3, 4]
    assert [e["version"] async for e in client.iter_stream(stream, from_version=2, page_size=1)] == [2, 3, 4]


async def test_expected_version_conflict_carries_the_current_version(client):
    stream = unique()
    await client.append(stream, events(2))
    with pytest.raises(WrongExpectedVersion) as info:
        await client.append(stream, events(1), expected_version=0)
    assert info.value.status == 409
    assert info.value.current_version == 2
    assert info.value.expected_version == 0

    with pytest.raises(WrongExpectedVersion) as missing:
        await client.append(unique(), events(1), expected_version="stream_exists")
    assert missing.value.current_version == 0

    ok = await client.append(stream, events(1), expected_version=2)
    assert ok["version"] == 3
    assert (await client.stream_info(stream))["version"] == 3


async def test_same_event_ids_are_idempotent_and_reused_ids_conflict(client):
    stream = unique()
    batch = [{"id": str(uuid.uuid4()), **e} for e in events(3)]
    first = await client.append(stream, batch, expected_version="no_stream")
    again = await client.append(stream, batch, expected_version="no_stream")
    assert again == first
    assert (await client.read_stream(stream))["version"] == 3

    changed = [{**batch[0], "data": {"n": "other"}}]
    with pytest.raises(DuplicateEventId) as info:
        await client.append(stream, changed)
    assert info.value.status == 409


async def test_missing_soft_deleted_and_hard_deleted_streams(client):
    with pytest.raises(StreamNotFound) as info:
        await client.read_stream(unique("missing"))
    assert info.value.status == 404

    soft = unique("soft")
    await client.append(soft, events(2))
    await client.delete_stream(soft, expected_version=2)
    with pytest.raises(StreamNotFound):
        await client.read_stream(soft)
    assert (await client.stream_info(soft))["deleted"] == "soft"
    again = await client.append(soft, events(1))
    assert again["version"] == 3, "numbering continues after a soft delete"

    hard = unique("hard")
    await client.append(hard, events(1))
    await client.delete_stream(hard, hard=True)
    with pytest.raises(StreamDeleted) as gone:
        await client.read_stream(hard)
    assert gone.value.status == 410
    with pytest.raises(StreamDeleted):
        await client.append(hard, events(1))


async def test_delete_with_a_stale_expected_version_changes_nothing(client):
    stream = unique()
    await client.append(stream, events(2))
    with pytest.raises(WrongExpectedVersion):
        await client.delete_stream(stream, expected_version=1)
    assert (await client.read_stream(stream))["version"] == 2


async def test_reserved_and_invalid_requests(client):
    with pytest.raises(ReservedStream) as info:
        await client.append("$system-" + uuid.uuid4().hex, events(1))
    assert info.value.status == 400
    with pytest.raises(InvalidRequest) as bad:
        await client.append(unique(), [{"type": "", "data": 1}])
    assert bad.value.status == 400
    assert bad.value.field == "events[0].type"


async def test_names_with_slashes_spaces_and_unicode_stay_one_segment(client):
    stream = f"tenant/a b?c#d%2F-é-{uuid.uuid4().hex[:6]}"
    await client.append(stream, events(2))
    page = await client.read_stream(stream)
    assert page["stream"] == stream
    assert {e["stream"] for e in page["events"]} == {stream}
    assert (await client.stream_info(stream))["stream"] == stream
    listed = await client.list_streams(prefix="tenant/a b")
    assert stream in [s["stream"] for s in listed["streams"]]


async def test_list_streams_by_prefix_and_pages(client):
    prefix = unique("list") + "-"
    names = [f"{prefix}{i}" for i in range(5)]
    for name in reversed(names):
        await client.append(name, events(1))
    page = await client.list_streams(prefix=prefix, limit=2)
    assert [s["stream"] for s in page["streams"]] == names[:2]
    assert page["next"] is not None
    assert [s["stream"] async for s in client.iter_streams(prefix=prefix, page_size=2)] == names


async def test_read_all_with_filters_and_cursor(client):
    prefix = unique("all") + "-"
    await client.append(prefix + "a", [*events(2, "Placed"), *events(1, "Shipped")])
    await client.append(prefix + "b", events(2, "Placed"))
    await client.append(unique("other"), events(3, "Placed"))

    everything = await client.read_all(limit=4096)
    assert everything["head"] >= 8
    positions = [e["position"] for e in everything["events"]]
    assert positions == sorted(positions)

    mine = [e async for e in client.iter_all(stream_prefix=prefix, page_size=2)]
    assert [(e["stream"][-1], e["type"]) for e in mine] == [("a", "Placed"), ("a", "Placed"), ("a", "Shipped"),
                                                            ("b", "Placed"), ("b", "Placed")]
    shipped = [e async for e in client.iter_all(stream_prefix=prefix, types=["Shipped"], page_size=3)]
    assert [e["type"] for e in shipped] == ["Shipped"]
    placed = [e async for e in client.iter_all(stream_pattern=prefix + "*", type_prefix="Pla")]
    assert len(placed) == 4
    two_types = [e async for e in client.iter_all(stream_prefix=prefix, types=["Shipped", "Placed"])]
    assert len(two_types) == 5

    start = mine[2]["position"]
    rest = await client.read_all(from_position=start, stream_prefix=prefix)
    assert [e["position"] for e in rest["events"]] == [e["position"] for e in mine[2:]]
    back = await client.read_all(backward=True, limit=1)
    assert back["events"][0]["position"] == back["head"]


async def test_the_iterators_of_all_take_system_streams_as_read_all_does(client):
    source = unique("snap")
    await client.append(source, events(1))
    await client.save_snapshot(source, version=1, type="State", data={"n": 1})
    page = await client.read_all(include_system=True, stream_prefix="$snapshot-" + source)
    assert [e["stream"] for e in page["events"]] == ["$snapshot-" + source]
    iterated = [e async for e in client.iter_all(include_system=True, stream_prefix="$snapshot-" + source,
                                                 page_size=1)]
    assert iterated == page["events"]


def test_a_client_made_without_a_url_reads_evstore_url_and_evstore_token(shared_node, monkeypatch):
    monkeypatch.setenv("EVSTORE_URL", shared_node.url)
    monkeypatch.setenv("EVSTORE_TOKEN", "from-the-environment")
    with EvstoreClient() as blocking:
        assert blocking.url == shared_node.url.rstrip("/") and blocking.token == "from-the-environment"
    assert AsyncEvstoreClient().url == shared_node.url.rstrip("/")
    with EvstoreClient("http://127.0.0.1:1", token="given") as given:
        assert given.token == "given" and given.url == "http://127.0.0.1:1"  # what is given wins
    with EvstoreClient("http://127.0.0.1:1") as elsewhere:
        assert elsewhere.token is None  # the environment's token goes to the environment's node only
    monkeypatch.delenv("EVSTORE_URL")
    monkeypatch.delenv("EVSTORE_TOKEN")
    assert AsyncEvstoreClient().url == "http://127.0.0.1:7113" and AsyncEvstoreClient().token is None


async def test_stream_metadata_round_trip_limits_reads(client):
    stream = unique()
    await client.append(stream, events(5))
    await client.set_stream_metadata(stream, {"maxCount": 2, "custom": {"owner": "tests"}})
    metadata = await client.get_stream_metadata(stream)
    assert metadata["maxCount"] == 2 and metadata["custom"] == {"owner": "tests"}
    assert [e["version"] for e in (await client.read_stream(stream))["events"]] == [4, 5]


# -- operations ---------------------------------------------------------------------------------

async def test_operations_endpoints(client):
    await client.append(unique("ops"), events(1))
    assert await client.health_live() is not None
    ready = await client.health_ready()
    assert ready["ready"] is True
    assert "evstore_" in await client.metrics()
    info = await client.info()
    assert info["store"] == "default"
    cluster = await client.cluster()
    assert cluster["role"] == "single"
    assert cluster["committedPosition"] >= 1
    verified = await client.verify()
    assert verified["checked"] >= 1 and verified["corrupt"] == []
    await client.scavenge()


async def test_connection_refused_is_typed():
    async with AsyncEvstoreClient("http://127.0.0.1:1", timeout=5) as c:
        with pytest.raises(ConnectionFailed):
            await c.info()


# -- retries through a proxy that answers 503 ----------------------------------------------------

class FlakyProxy:
    """Forwards to the node; the first `failures` appends are forwarded, then answered with 503, as
    when a leader commits but its reply is lost in a failover."""

    def __init__(self, target: str, failures: int, forward_failed: bool = True) -> None:
        self.target = target
        self.failures = failures
        self.forward_failed = forward_failed
        self.bodies: list[bytes] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.bodies.append(body)
        async with aiohttp.ClientSession() as session:
            failing = len(self.bodies) <= self.failures
            if failing and not self.forward_failed:
                return web.json_response({"error": "unavailable", "message": "no leader", "retryAfter": 0.01},
                                         status=503)
            async with session.request(request.method, self.target + request.raw_path, data=body,
                                       headers={"Content-Type": "application/json"}) as resp:
                payload = await resp.read()
                if failing:
                    return web.json_response({"error": "unavailable", "message": "no leader", "retryAfter": 0.01},
                                             status=503)
                return web.Response(body=payload, status=resp.status, content_type="application/json")

    async def __aenter__(self) -> "FlakyProxy":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_append_retried_after_503_sends_the_same_ids_and_writes_once(shared_node, client):
    stream = unique("retry")
    async with FlakyProxy(shared_node.url, failures=2) as proxy:
        async with AsyncEvstoreClient(proxy.url, retries=3) as flaky:
            reply = await flaky.append(stream, events(3), expected_version="no_stream")
    assert len(proxy.bodies) == 3
    assert proxy.bodies[0] == proxy.bodies[1] == proxy.bodies[2], "every attempt carries the same event ids"
    assert (reply["fromVersion"], reply["version"]) == (1, 3)
    page = await client.read_stream(stream)
    assert page["version"] == 3, "the first attempt was written; the retries wrote nothing"


async def test_retries_are_bounded(shared_node):
    async with FlakyProxy(shared_node.url, failures=100, forward_failed=False) as proxy:
        async with AsyncEvstoreClient(proxy.url, retries=2) as flaky:
            with pytest.raises(Unavailable) as info:
                await flaky.info()
    assert len(proxy.bodies) == 3
    assert info.value.retry_after == 0.01


async def test_other_errors_are_not_retried(shared_node, client):
    stream = unique()
    await client.append(stream, events(1))
    async with FlakyProxy(shared_node.url, failures=0) as proxy:
        async with AsyncEvstoreClient(proxy.url, retries=3) as through:
            with pytest.raises(WrongExpectedVersion):
                await through.append(stream, events(1), expected_version=0)
    assert len(proxy.bodies) == 1


# -- auth ---------------------------------------------------------------------------------------

async def test_bearer_tokens_and_roles(node_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("reader-token-0123456789 read\nwriter-token-0123456789 write\n")
    node = node_factory("auth", args=("--api-tokens-file", str(tokens)))
    stream = unique()
    async with AsyncEvstoreClient(node.url) as anonymous:
        with pytest.raises(Unauthorized) as info:
            await anonymous.read_all()
        assert info.value.status == 401
    async with AsyncEvstoreClient(node.url, token="reader-token-0123456789") as reader:
        with pytest.raises(Forbidden):
            await reader.append(stream, events(1))
        await reader.read_all()
    async with AsyncEvstoreClient(node.url, token="writer-token-0123456789") as writer:
        assert (await writer.append(stream, events(1)))["version"] == 1


# -- sync wrapper -------------------------------------------------------------------------------

def test_sync_client_from_a_plain_function(shared_node):
    stream = unique("sync")
    with EvstoreClient(shared_node.url) as c:
        reply = c.append(stream, events(5), expected_version="no_stream")
        assert reply["version"] == 5
        assert [e["version"] for e in c.iter_stream(stream, page_size=2)] == [1, 2, 3, 4, 5]
        assert len(list(c.iter_stream_pages(stream, page_size=2))) == 3
        with pytest.raises(WrongExpectedVersion) as info:
            c.append(stream, events(1), expected_version=1)
        assert info.value.current_version == 5
        assert c.stream_info(stream)["version"] == 5
        # an iterator abandoned half way is closed cleanly
        first = next(iter(c.iter_all(stream_prefix=stream)))
        assert first["stream"] == stream
        assert c.cluster()["role"] == "single"


async def test_sync_client_works_inside_a_running_event_loop(shared_node):
    stream = unique("sync-in-loop")
    with EvstoreClient(shared_node.url) as c:
        c.append(stream, events(1))
        assert c.read_stream(stream)["version"] == 1


async def test_concurrent_appends_share_one_client(client):
    stream = unique("concurrent")
    replies = await asyncio.gather(*(client.append(stream, events(2)) for _ in range(20)))
    assert sorted(r["version"] for r in replies) == list(range(2, 41, 2))
    assert (await client.read_stream(stream, limit=100))["version"] == 40


# -- the blocking client's transport: requests sent from the calling thread ---------------------

async def test_a_blocking_append_retried_after_503_sends_the_same_ids_and_writes_once(shared_node):
    stream = unique("blocking-retry")
    async with FlakyProxy(shared_node.url, failures=2) as proxy:
        def append() -> dict:
            with EvstoreClient(proxy.url, retries=3) as flaky:
                return flaky.append(stream, events(3), expected_version="no_stream")
        reply = await asyncio.to_thread(append)
    assert len(proxy.bodies) == 3
    assert proxy.bodies[0] == proxy.bodies[1] == proxy.bodies[2], "every attempt carries the same event ids"
    assert (reply["fromVersion"], reply["version"]) == (1, 3)
    with EvstoreClient(shared_node.url) as c:
        assert c.read_stream(stream)["version"] == 3, "the first attempt was written; the retries wrote nothing"


async def test_blocking_retries_are_bounded_and_other_errors_not_retried(shared_node):
    async with FlakyProxy(shared_node.url, failures=100, forward_failed=False) as proxy:
        def info() -> None:
            with EvstoreClient(proxy.url, retries=2) as flaky:
                flaky.info()
        with pytest.raises(Unavailable) as unavailable:
            await asyncio.to_thread(info)
    assert len(proxy.bodies) == 3
    assert unavailable.value.retry_after == 0.01

    stream = unique("blocking-conflict")
    async with FlakyProxy(shared_node.url, failures=0) as proxy:
        def conflict() -> None:
            with EvstoreClient(proxy.url, retries=3) as through:
                through.append(stream, events(1))
                through.append(stream, events(1), expected_version=0)
        with pytest.raises(WrongExpectedVersion) as wrong:
            await asyncio.to_thread(conflict)
    assert wrong.value.current_version == 1
    assert len(proxy.bodies) == 2


def test_blocking_connection_refused_is_typed():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connecting is refused
        with EvstoreClient(f"http://127.0.0.1:{port}", timeout=5) as c:
            with pytest.raises(ConnectionFailed, match="cannot connect"):
                c.info()


def test_a_server_that_never_answers_is_a_connection_failure_within_the_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        with EvstoreClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3, retries=0) as c:
            started = time.monotonic()
            with pytest.raises(ConnectionFailed, match="no reply"):
                c.info()
            assert time.monotonic() - started < 10


def test_a_keep_alive_connection_the_server_closed_is_replaced(node_factory):
    node = node_factory("keepalive", args=("--keepalive-timeout", "0.2"))
    stream = unique("keepalive")
    with EvstoreClient(node.url) as c:
        c.append(stream, events(1))
        idle = c._direct._pool._idle
        assert len(idle) == 1 and idle[0].sock is not None
        readable, _, _ = select.select([idle[0].sock], [], [], 10)  # the server's close arrives as EOF
        assert readable, "the node closes an idle connection after its keep-alive timeout"
        assert idle[0].sock.recv(1, socket.MSG_PEEK) == b""
        reply = c.append(stream, events(1), expected_version=1)
        assert reply["version"] == 2, "written once, on a new connection"
        assert c.read_stream(stream)["version"] == 2


def test_blocking_calls_send_the_token(node_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("reader-token-0123456789 read\n")
    node = node_factory("auth", args=("--api-tokens-file", str(tokens)))
    with EvstoreClient(node.url) as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.read_all()
    with EvstoreClient(node.url, token="reader-token-0123456789") as reader:
        assert reader.read_all()["events"] == []


def test_query_values_with_spaces_plus_signs_and_unicode_are_sent_exactly(shared_node):
    prefix = unique("query") + " a+b/ç"
    with EvstoreClient(shared_node.url) as c:
        c.append(prefix + "-1", events(2, type_="Type with space+plus é"))
        c.append(prefix + "-2", events(1, type_="Other"))
        found = list(c.iter_all(stream_prefix=prefix, types=["Type with space+plus é"], page_size=1))
        assert [(e["stream"], e["type"]) for e in found] == [(prefix + "-1", "Type with space+plus é")] * 2
        assert [s["stream"] for s in c.iter_streams(prefix=prefix)] == [prefix + "-1", prefix + "-2"]


def test_threads_share_one_blocking_client(shared_node):
    stream = unique("threads")
    with EvstoreClient(shared_node.url, max_connections=4) as c:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(10):
                    c.append(stream, events(2))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert c.read_stream(stream, limit=1000)["version"] == 320
        assert len(c._direct._pool._idle) <= 4, "at most max_connections are kept idle"


def test_complete_refuses_a_coroutine_that_waits_for_something_else():
    class Suspends:
        def __await__(self):
            yield  # what awaiting a future of an event loop does

    async def waits() -> None:
        await Suspends()

    with pytest.raises(RuntimeError, match="other than its own request"):
        complete(waits())


class ScriptedServer:
    """A raw HTTP/1.1 server on loopback, one connection at a time, doing to each request what `script`
    says in turn: "answer" (200, `{}`, keep-alive) or "drop" (read the request, close without a reply,
    as a server closing an idle connection just as a request arrives)."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.requests: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while self.script:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(10)
                buffered = b""
                while self.script:
                    while b"\r\n\r\n" not in buffered:
                        chunk = connection.recv(65536)
                        if not chunk:
                            break
                        buffered += chunk
                    if b"\r\n\r\n" not in buffered:
                        break
                    head, buffered = buffered.split(b"\r\n\r\n", 1)
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    while len(buffered) < length:
                        buffered += connection.recv(65536)
                    buffered = buffered[length:]
                    self.requests.append(head.split(b"\r\n")[0].decode())
                    if self.script.pop(0) == "drop":
                        break
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: 2\r\n\r\n{}")

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.thread.join(10)


def test_a_reused_connection_closed_without_a_reply_resends_a_get_but_not_a_post():
    with ScriptedServer(["answer", "drop", "answer"]) as server:
        with EvstoreClient(server.url, retries=0) as c:
            c.info()
            assert c.info() == {}, "the GET is sent again on a new connection"
    assert server.requests == ["GET /v1/info HTTP/1.1"] * 3

    with ScriptedServer(["answer", "drop", "answer"]) as server:
        with EvstoreClient(server.url, retries=0) as c:
            c.info()
            with pytest.raises(ConnectionFailed):
                c.step_down()
            assert c.info() == {}
    assert server.requests == ["GET /v1/info HTTP/1.1", "POST /v1/cluster/step-down HTTP/1.1",
                               "GET /v1/info HTTP/1.1"], "a POST the server may have read is not sent twice"
