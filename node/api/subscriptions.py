"""Handlers for /v1/subscriptions (persistent subscriptions): parse, call the service, shape the reply.

Delivery runs on the leader. A follower sends every HTTP call to the leader (cluster.forward) and relays a
WebSocket to the leader's, both ways, so consumers may connect to any node; when the leader goes the relay
closes (code 1012) and the consumer connects again. A WebSocket relayed to a node that does not lead (any
more) gets `{"error": "not_leader", "leader": {"node", "url"} | null}` and close code 4001.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import uuid

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from ..errors import InvalidRequest, LogError, Unavailable
from ..subscriptions.delivery import NACK_ACTIONS, Delivery, parse_delivery_id
from ..subscriptions.persistent import PersistentSubscriptions
from ..subscriptions.runtime import CLOSE_GOING_AWAY, CLOSE_NOT_LEADER, CLOSE_UPDATED, Closed
from ..subscriptions.settings import parse_settings, refuse_what_never_delivers, subscription_name
from . import validation as v
from .cluster import FORWARD_WAIT, FORWARDED_HEADER, Handler, forward, leader_write
from .keys import CLUSTER_KEY
from .middleware import error_response
from .shape import event_json, json_response, rfc3339

PERSISTENT_KEY = web.AppKey("persistent_subscriptions", PersistentSubscriptions)
RELAYS_KEY = web.AppKey("persistent_subscription_relays", set)  # a follower's relayed WebSockets
MAX_FETCH = 1000
DEFAULT_FETCH = 10
MAX_WAIT = 20.0  # below the follower's forwarding timeout, so a forwarded long poll comes back
MAX_IDS = 1000
MAX_PARKED_LIST = 1000
CONSUMER_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_CONSUMER = re.compile(CONSUMER_PATTERN)
HEARTBEAT = 30.0
RELAY_HEARTBEAT = 5.0  # a relay notices a leader gone silent (a partition) within two of these
HANDSHAKE_ERRORS = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "subscription_not_found",
                    409: "too_many_consumers", 503: "unavailable"}


def _service(request: web.Request) -> PersistentSubscriptions:
    return request.app[PERSISTENT_KEY]


def _name(request: web.Request) -> str:
    return subscription_name(request.match_info["name"])


def leader_only(handler: Handler) -> Handler:
    """Reads of delivery state: only the leader has it, so a follower asks the leader."""
    @functools.wraps(handler)
    async def route(request: web.Request) -> web.StreamResponse:
        member = request.app.get(CLUSTER_KEY)
        if member is None or member.role == "leader":
            return await handler(request)
        return await forward(request, member, handler, write=False)
    return route


def _body(raw: bytes, allowed: set[str]) -> dict:
    return v.require_object(v.parse_json_body(raw), "body", allowed)


def delivery_json(delivery: Delivery) -> dict:
    out = {"deliveryId": delivery.delivery_id, "attempt": delivery.attempt, "event": event_json(delivery.event)}
    if delivery.replayed:
        out["replayed"] = True
    return out


def parse_ids(value, field: str = "ids") -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_IDS:
        raise InvalidRequest(f"{field} must be a list of 1 to {MAX_IDS} delivery ids", field=field)
    for i, item in enumerate(value):
        if parse_delivery_id(item) is None:
            raise InvalidRequest(f"{field}[{i}] is not a delivery id (as sent with the event)",
                                 field=f"{field}[{i}]")
    return value


def parse_action(value) -> str:
    if value not in NACK_ACTIONS:
        raise InvalidRequest(f"action must be one of {', '.join(NACK_ACTIONS)}", field="action")
    return value


# settings ------------------------------------------------------------------------------------------
async def create(request: web.Request) -> web.Response:
    name = _name(request)
    v.query_params(request.query, {})
    settings = parse_settings(v.parse_json_body(await request.read()))
    refuse_what_never_delivers(settings)
    created, info = await _service(request).create(name, settings)
    return json_response(info, status=201 if created else 200)


async def update(request: web.Request) -> web.Response:
    name = _name(request)
    v.query_params(request.query, {})
    changes = v.parse_json_body(await request.read())
    if not isinstance(changes, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    return json_response(await _service(request).update(name, changes))


async def info(request: web.Request) -> web.Response:
    name = _name(request)
    v.query_params(request.query, {})
    return json_response((await _service(request).runtime(name)).info())


async def list_all(request: web.Request) -> web.Response:
    v.query_params(request.query, {})
    return json_response({"subscriptions": await _service(request).list()})


async def delete(request: web.Request) -> web.Response:
    name = _name(request)
    v.query_params(request.query, {})
    await v.refuse_body(request)
    await _service(request).delete(name)
    return web.Response(status=204)


# consuming over HTTP ------------------------------------------------------------------------------
def _seconds_param(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (text.isascii() and 0 <= value <= MAX_WAIT):
        raise InvalidRequest(f"{name} must be a number of seconds from 0 to {MAX_WAIT:g}", field=name)
    return value


def _consumer_param(name: str, text: str) -> str:
    if not _CONSUMER.fullmatch(text):
        raise InvalidRequest(f"{name} must be 1 to 64 letters, digits, '.', '_' or '-'", field=name)
    return text


FETCH_PARAMS = {"max": v.int_param(1, MAX_FETCH), "wait": _seconds_param, "consumer": _consumer_param}


async def fetch(request: web.Request) -> web.Response:
    name = _name(request)
    q = v.query_params(request.query, FETCH_PARAMS)
    await v.refuse_body(request, ": max, wait and consumer are query parameters")
    runtime = await _service(request).runtime(name)
    deliveries = await runtime.fetch("http-" + q.get("consumer", "default"), q.get("max", DEFAULT_FETCH),
                                     q.get("wait", 0.0))
    return json_response({"events": [delivery_json(d) for d in deliveries]})


async def ack(request: web.Request) -> web.Response:
    name = _name(request)
    v.query_params(request.query, {})
    ids = parse_ids(_body(await request.read(), {"ids"}).get("ids"))
    acked, unknown = (await _service(request).runtime(name)).ack(ids)
    return json_response({"acked": len(acked), "unknown": unknown})


async def nack(request: web.Request) -> web.Response:
    name = _name(request)
    v.query_params(request.query, {})
    body = _body(await request.read(), {"ids", "action"})
    ids = parse_ids(body.get("ids"))
    action = parse_action(body.get("action", "retry"))
    done, unknown = (await _service(request).runtime(name)).nack(ids, action)
    return json_response({"nacked": len(done), "unknown": unknown})


# parked events ------------------------------------------------------------------------------------
PARKED_PARAMS = {"limit": v.int_param(1, MAX_PARKED_LIST)}


async def parked(request: web.Request) -> web.Response:
    name = _name(request)
    q = v.query_params(request.query, PARKED_PARAMS)
    runtime = await _service(request).runtime(name)
    entries = await runtime.parked_events(q.get("limit", v.DEFAULT_READ_LIMIT))
    return json_response({"events": [
        {"parkedId": entry.parked_version, "stream": entry.stream, "version": entry.version,
         "position": entry.position, "eventId": entry.event_id, "reason": entry.reason, "attempts": entry.attempts,
         "parked": rfc3339(entry.parked_at), "event": event_json(record) if record is not None else None}
        for entry, record in entries], "total": len(runtime.parked)})


async def replay_parked(request: web.Request) -> web.Response:
    name = _name(request)
    v.query_params(request.query, {})
    await v.refuse_body(request)
    replaying, missing = await (await _service(request).runtime(name)).replay()
    return json_response({"replaying": replaying, "missing": missing})


# consuming over a WebSocket -----------------------------------------------------------------------
class UpgradeRequired(LogError):
    status, code = 426, "upgrade_required"


async def connect(request: web.Request) -> web.StreamResponse:
    name = _name(request)
    v.query_params(request.query, {})
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT)
    if not ws.can_prepare(request).ok:
        raise UpgradeRequired("this is a WebSocket endpoint: connect with a WebSocket client")
    member = request.app.get(CLUSTER_KEY)
    if member is not None and member.role != "leader":
        if FORWARDED_HEADER not in request.headers:
            leader = await member.wait_for_leader(FORWARD_WAIT)  # 503 while no leader is known
            if leader.node != member.me.node:
                return await _relay(request, member, leader)
        else:  # one hop only: the sender thought this node leads
            leader = member.leader
            await ws.prepare(request)
            await _send_closed(ws, Closed(CLOSE_NOT_LEADER, "not_leader", "persistent subscriptions are delivered "
                                          "by the leader: connect to it", {"node": leader.node, "url": leader.url}
                                          if leader is not None else None))
            return ws
    runtime = await _service(request).runtime(name)
    consumer_id = "ws-" + uuid.uuid4().hex[:12]
    outbox = runtime.connect(consumer_id)  # 409 too_many_consumers before the upgrade
    sender: asyncio.Task | None = None
    try:
        await ws.prepare(request)
        sender = asyncio.get_running_loop().create_task(_send_loop(ws, outbox))
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                await _send_error(ws, InvalidRequest("messages are JSON text", field="message"))
                continue
            try:
                _answer(runtime, message.data)
            except InvalidRequest as exc:
                await _send_error(ws, exc)
    finally:
        runtime.disconnect(consumer_id)
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
    return ws


async def _relay(request: web.Request, member, leader) -> web.StreamResponse:
    """Pass the consumer's WebSocket through to the leader's, both ways, until either side closes."""
    headers = {key: request.headers[key] for key in ("Authorization",) if key in request.headers}
    headers[FORWARDED_HEADER] = member.me.node
    try:
        upstream = await member.session.ws_connect(leader.url + request.path_qs, headers=headers,
                                                   heartbeat=RELAY_HEARTBEAT,
                                                   timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
    except aiohttp.WSServerHandshakeError as exc:
        status = exc.status if exc.status in HANDSHAKE_ERRORS else 503
        details = {"retryAfter": 1.0, "reason": "leader_refused"} if status == 503 else {}
        return error_response(status, HANDSHAKE_ERRORS[status],
                              f"the leader {leader.node} refused the connection (HTTP {exc.status})", **details)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        raise Unavailable(f"the leader {leader.node} cannot be reached", reason="leader_unreachable") from None
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT)
    to_leader: asyncio.Task | None = None
    relays = request.app[RELAYS_KEY]
    relays.add(ws)
    try:
        await ws.prepare(request)
        to_leader = asyncio.get_running_loop().create_task(_pipe_to_leader(ws, upstream))
        async for message in upstream:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        code = upstream.close_code
        # the leader's own close code when it sent one (deleted, updated, not leader), else "connect again"
        await ws.close(code=code if code and code not in (1005, 1006) else CLOSE_UPDATED,
                       message=b"the connection to the leader closed")
    except (ConnectionError, RuntimeError):
        pass  # the consumer went away
    finally:
        relays.discard(ws)
        if to_leader is not None:
            to_leader.cancel()
        await upstream.close()
    return ws


async def _close_relays(app: web.Application) -> None:
    """At shutdown, before aiohttp waits for open connections: relayed consumers go elsewhere."""
    for ws in list(app[RELAYS_KEY]):
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=CLOSE_GOING_AWAY, message=b"shutting_down")


async def _pipe_to_leader(ws: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await upstream.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await upstream.send_bytes(message.data)
    finally:
        await upstream.close()  # the consumer closed: so does the leader's side (its events come again)


def _answer(runtime, text: str) -> None:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidRequest("a message must be JSON: {\"ack\": [...]} or {\"nack\": [...], \"action\": ...}",
                             field="message") from None
    doc = v.require_object(doc, "message", {"ack", "nack", "action"})
    if ("ack" in doc) == ("nack" in doc):
        raise InvalidRequest("a message holds either ack or nack", field="message")
    if "ack" in doc:
        runtime.ack(parse_ids(doc["ack"], "ack"))
    else:
        runtime.nack(parse_ids(doc["nack"], "nack"), parse_action(doc.get("action", "retry")))


async def _send_loop(ws: web.WebSocketResponse, outbox: asyncio.Queue) -> None:
    while True:
        item = await outbox.get()
        batch: list[Delivery] = []
        while isinstance(item, list):
            batch.extend(item)
            item = outbox.get_nowait() if not outbox.empty() else None
        if batch:
            await ws.send_str(orjson.dumps({"events": [delivery_json(d) for d in batch]}).decode())
        if isinstance(item, Closed):
            await _send_closed(ws, item)
            return


async def _send_closed(ws: web.WebSocketResponse, closed: Closed) -> None:
    message = {"error": closed.reason, "message": closed.message}
    if closed.leader is not None or closed.reason == "not_leader":
        message["leader"] = closed.leader
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(orjson.dumps(message).decode())
        await ws.close(code=closed.code, message=closed.reason.encode())


async def _send_error(ws: web.WebSocketResponse, exc: LogError) -> None:
    await ws.send_str(orjson.dumps({"error": exc.code, "message": exc.message, **exc.details}).decode())


def add_routes(app: web.Application, service: PersistentSubscriptions) -> None:
    app[PERSISTENT_KEY] = service
    app[RELAYS_KEY] = set()
    app.on_shutdown.append(_close_relays)
    app.router.add_get("/v1/subscriptions", leader_only(list_all))
    app.router.add_put("/v1/subscriptions/{name}", leader_write(create))
    app.router.add_patch("/v1/subscriptions/{name}", leader_write(update))
    app.router.add_get("/v1/subscriptions/{name}", leader_only(info))
    app.router.add_delete("/v1/subscriptions/{name}", leader_write(delete))
    app.router.add_get("/v1/subscriptions/{name}/connect", connect)
    app.router.add_post("/v1/subscriptions/{name}/fetch", leader_write(fetch))
    app.router.add_post("/v1/subscriptions/{name}/ack", leader_write(ack))
    app.router.add_post("/v1/subscriptions/{name}/nack", leader_write(nack))
    app.router.add_get("/v1/subscriptions/{name}/parked", leader_only(parked))
    app.router.add_post("/v1/subscriptions/{name}/parked/replay", leader_write(replay_parked))

