"""A stand-in for the node's subscription routes, speaking shared/API.md ("Transient subscriptions",
"Persistent subscriptions") on 127.0.0.1 with a real aiohttp server.

A test double is used here ONLY because the real routes do not exist on the client's branch yet (they are
being built in parallel); tests/integration/test_subscribe_client.py runs the same client against a real
node. The double is deliberately small: a list of events, SSE with `id:` = position, `Last-Event-ID`
resume, caughtUp, `event: heartbeat` messages carrying the last scanned position, and a persistent
subscription WebSocket that delivers and records acks/nacks. Knobs let a test drop connections.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web


def event(position: int, type_: str = "Happened", stream: str = "s-1", data: Any = None) -> dict:
    return {"id": f"00000000-0000-0000-0000-{position:012d}", "stream": stream, "version": position,
            "position": position, "type": type_, "data": {"n": position} if data is None else data,
            "metadata": {}, "created": "2026-12-01T00:00:00.000000Z"}


def sse(data: dict, *, id: int | None = None, name: str | None = None) -> bytes:
    lines = []
    if name:
        lines.append(f"event: {name}")
    if id is not None:
        lines.append(f"id: {id}")
    lines.append("data: " + json.dumps(data))
    return ("\n".join(lines) + "\n\n").encode()


@dataclass
class Double:
    events: list[dict] = field(default_factory=list)
    # transient subscriptions
    requests: list[dict] = field(default_factory=list)   # one per /v1/subscribe request: query + Last-Event-ID
    drop_after: list[int] = field(default_factory=list)  # per connection: close after this many events
    heartbeat_after_replay: bool = False
    comment_heartbeats: bool = False
    repeat_on_resume: bool = False                       # misbehave: resend the Last-Event-ID event
    refuse_with: list[tuple[int, dict]] = field(default_factory=list)  # per request: status and body
    crlf: bool = False
    end_with: list[tuple[str, dict]] = field(default_factory=list)  # per connection: a last message (name, data)
    # persistent subscriptions
    ws_sent: list[dict] = field(default_factory=list)    # what consumers sent
    deliveries: list[list[dict]] = field(default_factory=list)  # per connection: the batches to send
    ws_refuse: list[int] = field(default_factory=list)   # per connection attempt: refuse with this status
    ws_connections: int = 0
    leader_url: str | None = None                        # set: this node is a follower and names the leader
    http: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path_qs, body) of other routes
    replies: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    _live: asyncio.Condition | None = None

    async def append(self, *new: dict) -> None:
        self.events.extend(new)
        async with self._live:
            self._live.notify_all()

    # -- SSE -------------------------------------------------------------------------------

    def _matches(self, ev: dict, query: Any) -> bool:
        types = query.getall("type", [])
        return (not types or ev["type"] in types) and ("stream" not in query or ev["stream"] == query["stream"])

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"query": dict(request.query), "types": request.query.getall("type", []),
                              "last_event_id": request.headers.get("Last-Event-ID"),
                              "accept": request.headers.get("Accept")})
        if self.refuse_with:
            status, body = self.refuse_with.pop(0)
            return web.json_response(body, status=status)
        last = request.headers.get("Last-Event-ID")
        if last is not None:
            after = int(last) - (1 if self.repeat_on_resume else 0)
        elif "fromPosition" in request.query:
            after = int(request.query["fromPosition"]) - 1
        elif "fromVersion" in request.query:  # the double's events have version == position
            after = int(request.query["fromVersion"]) - 1
        elif request.query.get("start") == "start":
            after = 0
        else:
            after = len(self.events)
        limit = self.drop_after.pop(0) if self.drop_after else None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        end = b"\r\n" if self.crlf else b"\n"

        async def send(chunk: bytes) -> None:
            await response.write(chunk.replace(b"\n", end) if self.crlf else chunk)

        sent = 0
        cursor = after
        caught_up = False
        while True:
            while cursor < len(self.events):
                ev = self.events[cursor]
                cursor += 1
                if not self._matches(ev, request.query):
                    continue
                await send(sse({"event": ev}, id=ev["position"]))
                sent += 1
                if limit and sent >= limit:
                    if self.end_with:
                        name, data = self.end_with.pop(0)
                        await send(sse(data, id=data.get("position"), name=name))
                    return response  # the connection ends here
            if not caught_up:
                caught_up = True
                await send(sse({"caughtUp": True, "position": cursor}, id=cursor))
                if self.comment_heartbeats:
                    await send(b": keep-alive\n\n")
                if self.heartbeat_after_replay:
                    await send(sse({"heartbeat": True, "position": cursor}, id=cursor, name="heartbeat"))
                if limit == 0:
                    return response
            async with self._live:
                await self._live.wait_for(lambda: cursor < len(self.events))

    # -- persistent subscriptions ----------------------------------------------------------

    async def connect(self, request: web.Request) -> web.StreamResponse:
        self.ws_connections += 1
        if self.ws_refuse:
            status = self.ws_refuse.pop(0)
            return web.json_response({"error": "x", "message": "refused"}, status=status)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.leader_url is not None:
            await ws.send_str(json.dumps({"error": "not_leader", "message": "connect to the leader",
                                          "leader": {"node": "leader", "url": self.leader_url}}))
            await ws.close(code=4001, message=b"not_leader")
            return ws
        batches = self.deliveries.pop(0) if self.deliveries else []
        close_after_send = bool(batches) and batches[-1] == {"close": True}
        for batch in batches:
            if batch != {"close": True}:
                await ws.send_str(json.dumps(batch))
        if close_after_send:
            await ws.close()
            return ws
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.ws_sent.append(json.loads(message.data))
        return ws

    async def other(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.http.append((request.method, request.path_qs, body))
        status, reply = self.replies.get((request.method, request.path), (200, {}))
        if status == 204:
            return web.Response(status=204)
        return web.json_response(reply, status=status)


async def start(double: Double) -> tuple[web.AppRunner, str]:
    double._live = asyncio.Condition()
    app = web.Application()
    app.router.add_get("/v1/subscribe", double.subscribe)
    app.router.add_get("/v1/subscriptions/{name}/connect", double.connect)
    app.router.add_route("*", "/{tail:.*}", double.other)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"
