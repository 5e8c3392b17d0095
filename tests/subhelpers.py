"""Test-side transient subscribers over real HTTP: Server-Sent Events (parsed with the client library's
SSE parser) and WebSocket (aiohttp's client), both yielding (kind, id, message) with kind "message" for
events and caughtUp, or the SSE event name (heartbeat, error, closed)."""
from __future__ import annotations

import contextlib
import json
from typing import AsyncIterator

import aiohttp

from evstore.client.sse import SSEParser


@contextlib.asynccontextmanager
async def sse(session: aiohttp.ClientSession, url: str, params=None, headers=None
              ) -> AsyncIterator[AsyncIterator[tuple[str, str | None, dict]]]:
    async with session.get(url + "/v1/subscribe", params=params,
                           headers={"Accept": "text/event-stream", **(headers or {})}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")

        async def messages():
            parser = SSEParser()
            async for raw in resp.content:
                message = parser.feed(raw.decode().rstrip("\r\n"))
                if message is not None:
                    yield message.event, message.id, json.loads(message.data)

        yield messages()


@contextlib.asynccontextmanager
async def websocket(session: aiohttp.ClientSession, url: str, params=None
                    ) -> AsyncIterator[AsyncIterator[tuple[str, str | None, dict]]]:
    async with session.ws_connect(url + "/v1/subscribe", params=params) as ws:
        async def messages():
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    return
                data = json.loads(frame.data)
                kind = "heartbeat" if "heartbeat" in data else "error" if "error" in data else "message"
                yield kind, None, data

        yield messages()


def subscriber(kind: str):
    return sse if kind == "sse" else websocket


async def collect(messages, *, until_position: int | None = None, until_caught_up: bool = False,
                  skip_heartbeats: bool = True) -> list[dict]:
    """Messages (events as their event objects, others as they are) until a caughtUp or an event at
    `until_position`."""
    got = []
    async for kind, _id, data in messages:
        if kind == "heartbeat" and skip_heartbeats:
            continue
        got.append(data)
        if until_caught_up and data.get("caughtUp"):
            break
        if until_position is not None and "event" in data and data["event"]["position"] >= until_position:
            break
    return got


def positions(messages: list[dict]) -> list[int]:
    return [m["event"]["position"] for m in messages if "event" in m]
