"""The connection bound on asyncio's own loop (what a clustered node runs; a single node runs uvloop, tested in
tests/integration/test_resources.py): a real aiohttp server behind the gate, on a loopback socket."""
from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from evstore.node.api import connections
from evstore.node.api.connections import ConnectionGate

LIMIT = 8
WAIT = 10


@pytest.fixture
async def gated():
    async def info(request: web.BaseRequest) -> web.Response:
        return web.json_response({"ok": True})

    server = web.Server(info)
    refused: list[int] = []
    gate = ConnectionGate(server, maximum=LIMIT, refused=lambda: refused.append(1))
    listener = await asyncio.get_running_loop().create_server(gate, "127.0.0.1", 0)
    yield gate, listener.sockets[0].getsockname()[1], refused
    listener.close()
    await server.shutdown(1)


async def status_of(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/v1/info") -> bytes:
    """Send one request and read its whole response (so that the connection can take another); its status line's
    first 12 bytes."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(WAIT):
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
    return status[:12]


async def test_a_burst_of_accepts_gets_no_more_than_the_limit(gated):
    gate, port, refused = gated
    # opened at once: asyncio accepts them in one go, and aiohttp sees each only a loop turn later
    opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(3 * LIMIT)))
    try:
        statuses = await asyncio.gather(*(status_of(reader, writer) for reader, writer in opened))
    finally:
        for _reader, writer in opened:
            writer.close()
    assert sorted(statuses) == [b"HTTP/1.1 200"] * LIMIT + [b"HTTP/1.1 503"] * (2 * LIMIT)
    assert len(refused) == 2 * LIMIT


async def test_closed_connections_stop_counting(gated):
    gate, port, _refused = gated
    for _ in range(3):  # three times the limit's worth, one after another
        opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMIT)]
        assert [await status_of(r, w) for r, w in opened] == [b"HTTP/1.1 200"] * LIMIT
        for _reader, writer in opened:
            writer.close()
            await writer.wait_closed()
        async with asyncio.timeout(WAIT):
            while gate.open:
                await asyncio.sleep(0.01)  # the server's side of each close is a loop turn or two away


async def test_a_refused_connection_that_never_speaks_is_closed(gated, monkeypatch):
    monkeypatch.setattr(connections, "REFUSAL_SECONDS", 0.2)
    gate, port, _refused = gated
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMIT)]
    try:
        assert [await status_of(r, w) for r, w in held] == [b"HTTP/1.1 200"] * LIMIT
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await status_of(reader, writer, "/health/live") == b"HTTP/1.1 200"
        writer.close()
    finally:
        for _reader, writer in held:
            writer.close()


async def test_peers_scrapes_and_probes_may_use_the_reserve_past_the_limit(gated, monkeypatch):
    """A full leader must still take its followers' fetches (or lose its in-sync set) and Prometheus' scrapes;
    the reserve for them is bounded too."""
    monkeypatch.setattr(connections, "RESERVED", 2)
    gate, port, refused = gated
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMIT)]
    try:
        assert [await status_of(r, w) for r, w in held] == [b"HTTP/1.1 200"] * LIMIT
        reserve = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        held += reserve
        assert [await status_of(r, w, path) for (r, w), path in zip(reserve, ("/v1/internal/x", "/metrics"))] == \
            [b"HTTP/1.1 200"] * 2  # aiohttp answered them (the test server answers every path)
        # taken over: the connection stays aiohttp's, its next request is served too
        assert await status_of(*reserve[0], "/v1/internal/y") == b"HTTP/1.1 200"
        assert gate.open == LIMIT + 2
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the reserve is used up
        assert await status_of(reader, writer, "/metrics") == b"HTTP/1.1 503"
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # liveness is answered by the gate
        assert await status_of(reader, writer, "/health/live") == b"HTTP/1.1 200"
        writer.close()
        assert len(refused) == 1  # the scrape past the reserve; the others were served
    finally:
        for _reader, writer in held:
            writer.close()


async def test_closing_the_gate_closes_the_refused_connections(gated):
    gate, port, _refused = gated
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMIT)]
    try:
        assert [await status_of(r, w) for r, w in held] == [b"HTTP/1.1 200"] * LIMIT
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # refused, says nothing
        async with asyncio.timeout(WAIT):
            while not gate._refusals:
                await asyncio.sleep(0.01)
        gate.close()
        assert await asyncio.wait_for(reader.read(), 1) == b""  # long before REFUSAL_SECONDS
        writer.close()
    finally:
        for _reader, writer in held:
            writer.close()
