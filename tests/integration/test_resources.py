"""Resources a hostile or careless client could pin stay bounded (issue 12, point 3): aborted uploads free
their memory, replies stop at a byte budget, and slow bodies time out."""
from __future__ import annotations

import asyncio
import base64
import json
import socket
import time

import aiohttp
import pytest


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def aborted_upload(port: int, sent: int, declared: int) -> None:
    """Send the headers of a `declared`-byte append and `sent` bytes of its body, then close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /v1/streams/leak HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {declared}\r\n\r\n".encode())
        chunk = b'{"events": [{"type": "T", "data": "' + b"x" * (1 << 20)
        left = sent
        while left > 0:
            piece = chunk[:left]
            sock.sendall(piece)
            left -= len(piece)


def test_aborted_large_uploads_do_not_pin_memory(node):
    async def settle() -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(f"{node.url}/health/live") as resp:
                    assert resp.status == 200

    asyncio.run(settle())
    before = rss_bytes(node.proc.pid)
    for _ in range(30):
        aborted_upload(node.port, sent=7 << 20, declared=8 << 20)
    asyncio.run(settle())
    deadline = time.monotonic() + 10
    grown = rss_bytes(node.proc.pid) - before
    while grown > 120 << 20 and time.monotonic() < deadline:  # the node sees the last closes soon after
        asyncio.run(settle())
        grown = rss_bytes(node.proc.pid) - before
    assert grown < 120 << 20, f"30 aborted 7 MiB uploads left {grown >> 20} MiB behind"


async def test_a_read_reply_stops_at_a_byte_budget(node):
    big = base64.b64encode(b"\x00" * (3 << 20)).decode()  # 3 MiB of data per event, sent as base64
    async with aiohttp.ClientSession(base_url=node.url) as http:
        for _ in range(4):
            async with http.post("/v1/streams/big", json={"events": [{"type": "Big", "dataBase64": big}] * 3}) as r:
                assert r.status == 200, await r.text()
        seen, cursor, pages = 0, None, 0
        while True:
            params = {"limit": "4096", **({"from": str(cursor)} if cursor else {})}
            async with http.get("/v1/streams/big", params=params) as resp:
                assert resp.status == 200
                body = await resp.read()
            page = json.loads(body)
            assert len(body) < 20 << 20, f"one page of {len(body) >> 20} MiB"
            seen += len(page["events"])
            pages += 1
            if page["next"] is None:
                break
            cursor = page["next"]
        assert seen == 12 and pages > 1
        seen, cursor = 0, None
        while True:
            params = {"limit": "4096", "type": "Big", **({"from": str(cursor)} if cursor else {})}
            async with http.get("/v1/all", params=params) as resp:
                body = await resp.read()
            assert len(body) < 20 << 20
            page = json.loads(body)
            seen += len(page["events"])
            if page["next"] is None:
                break
            cursor = page["next"]
        assert seen == 12


def exchange(port: int, first: bytes, *, trickle: bytes = b"", every: float = 0.2, budget: float = 15) -> tuple[bytes, float]:
    """Send `first`, then `trickle` one byte at a time every `every` seconds while the node keeps the
    connection; return what the node answered and how long the connection lasted."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=budget) as sock:
        sock.sendall(first)
        sock.settimeout(every)
        answer = b""
        for byte in trickle:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    return answer, time.monotonic() - started
                answer += chunk
            except TimeoutError:
                pass
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            if time.monotonic() - started > budget:
                break
        sock.settimeout(budget)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, OSError):
            pass
    return answer, time.monotonic() - started


@pytest.fixture
def impatient(node_factory):
    return node_factory("impatient", args=("--body-timeout", "1", "--keepalive-timeout", "1.5"))


def test_a_body_that_never_ends_is_a_408(impatient):
    head = (b"POST /v1/streams/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
    answer, lasted = exchange(impatient.port, head, trickle=b"1\r\n \r\n" * 100)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
    assert lasted < 8


def test_idle_connections_and_slow_headers_are_closed(impatient):
    answer, lasted = exchange(impatient.port, b"")  # connects and says nothing
    assert answer == b"" and lasted < 8
    answer, lasted = exchange(impatient.port, b"GET /health/live HTTP/1.1\r\n", trickle=b"X-Slow: 1\r\n" * 100)
    assert b"200 OK" not in answer and lasted < 8


LIMIT = 12  # --max-connections of the test's node


@pytest.fixture
def crowded(node_factory):
    return node_factory("crowded", args=("--max-connections", str(LIMIT), "--max-subscribers", "4"))


def ask(port: int, request: bytes, *, budget: float = 10) -> bytes:
    """Send one request on a new connection and read until the node closes it or `budget` seconds pass."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=budget) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"Connection: close" not in answer and b"\r\n\r\n" in answer:  # a keep-alive answer: done
                    head, _, body = answer.partition(b"\r\n\r\n")
                    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
        except (TimeoutError, OSError):
            pass
    return answer


def test_connections_past_the_limit_are_refused_with_a_503_and_liveness_still_answers(crowded):
    info = b"GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n"
    held = [socket.create_connection(("127.0.0.1", crowded.port), timeout=10) for _ in range(LIMIT)]
    try:
        for sock in held:  # every one of them is served (so each is open on the node's side)
            sock.sendall(info)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200"), "a connection within the limit was refused"
        answer = ask(crowded.port, info)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Connection: close" in head and b"Retry-After: 1" in head, head
        reply = json.loads(body)
        assert (reply["error"], reply["reason"], reply["maxConnections"]) == ("unavailable", "too_many_connections",
                                                                               LIMIT)
        # a body sent with a refused request is read and dropped: the answer still arrives whole
        append = b'{"events": [{"type": "T", "data": {}}]}'
        answer = ask(crowded.port, b"POST /v1/streams/refused HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (len(append), append))
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        live = ask(crowded.port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")  # or the kubelet restarts the pod
        assert live.startswith(b"HTTP/1.1 200") and json.loads(live.partition(b"\r\n\r\n")[2]) == {"status": "ok"}
        scrape = ask(crowded.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # the reserve: aiohttp serves it
        assert scrape.startswith(b"HTTP/1.1 200") and b"evstore_http_connections_refused_total" in scrape
        silent = socket.create_connection(("127.0.0.1", crowded.port), timeout=15)  # refused, and never speaks
        started = time.monotonic()
        assert silent.recv(1) == b"" and time.monotonic() - started < 12
        silent.close()
    finally:
        for sock in held[1:]:
            sock.close()
    deadline = time.monotonic() + 10  # the node sees the closes on its next loop turns
    refused_again = 0
    while not ask(crowded.port, info).startswith(b"HTTP/1.1 200"):
        refused_again += 1
        assert time.monotonic() < deadline, "closed connections still count against the limit"
    held[0].sendall(info)
    assert held[0].recv(65536).startswith(b"HTTP/1.1 200")
    held[0].close()
    metrics = ask(crowded.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").decode()
    refused = [line for line in metrics.splitlines() if line.startswith("evstore_http_connections_refused_total ")]
    # answered 503 (the GET, the POST) or closed unanswered (the silent one); the probe and the scrape were served
    assert refused and float(refused[0].split()[1]) == 3 + refused_again, refused



def test_a_burst_of_connections_gets_no_more_than_the_limit(crowded):
    """Connections accepted in one burst count from their accept on (aiohttp sees each a loop turn later)."""
    burst = [socket.create_connection(("127.0.0.1", crowded.port), timeout=10) for _ in range(2 * LIMIT)]
    try:
        for sock in burst:
            sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n")
        statuses = sorted(sock.recv(65536)[:12] for sock in burst)
    finally:
        for sock in burst:
            sock.close()
    assert statuses == [b"HTTP/1.1 200"] * LIMIT + [b"HTTP/1.1 503"] * LIMIT
