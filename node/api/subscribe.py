"""GET /v1/subscribe (transient subscriptions, as Server-Sent Events or WebSocket) and
POST /v1/subscribe/token (a short-lived token for browsers' EventSource)."""
from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import InvalidRequest, LogError
from ..subscriptions.selector import MAX_PAYLOAD_DEPTH, Selector, depth, parse_json
from ..subscriptions.transient import Message, Start, Subscription, TransientSubscriptions
from . import subscribe_tokens
from . import validation as v
from .connections import on_connection_lost
from .keys import METRICS_KEY, SETTINGS_KEY
from .shape import event_json, json_response, rfc3339
from .streams import include_system

SUBSCRIPTIONS_KEY = web.AppKey("transient_subscriptions", TransientSubscriptions)
DEFAULT_HEARTBEAT = 5
MAX_HEARTBEAT = 60
MAX_PAYLOAD_CHARS = 4096
SELECTORS = ("stream", "type", "typePrefix", "streamPrefix", "streamPattern", "payload")
STARTS = ("fromVersion", "fromPosition", "start")
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _stream_param(name: str, text: str) -> str:
    return v.stream_name(text)


def _payload_param(name: str, text: str) -> dict:
    if len(text) > MAX_PAYLOAD_CHARS:
        raise InvalidRequest(f"payload is at most {MAX_PAYLOAD_CHARS} characters of JSON", field=name)
    try:
        orjson.loads(text)  # validates (and bounds the nesting) before the exact parse below
        value = parse_json(text)
    except (ValueError, RecursionError):
        raise InvalidRequest("payload must be a JSON object", field=name) from None
    if not isinstance(value, dict):
        raise InvalidRequest("payload must be a JSON object", field=name)
    if depth(value) > MAX_PAYLOAD_DEPTH:
        raise InvalidRequest(f"payload nests deeper than {MAX_PAYLOAD_DEPTH} levels", field=name)
    return value


PARAMS = {"stream": _stream_param, "type": v.text_param(v.MAX_TYPE_CHARS), "typePrefix": v.text_param(v.MAX_TYPE_CHARS),
          "streamPrefix": v.text_param(), "streamPattern": v.text_param(), "payload": _payload_param,
          "fromVersion": v.int_param(1), "fromPosition": v.int_param(1), "start": v.choice_param("start", "end"),
          "includeSystem": v.bool_param, "heartbeat": v.int_param(1, MAX_HEARTBEAT),
          subscribe_tokens.QUERY_PARAM: v.text_param(256)}


def parse_request(request: web.Request) -> tuple[Selector, Start, int]:
    """Selector, start and heartbeat interval of a subscription request; InvalidRequest on anything wrong."""
    q = v.query_params(request.query, PARAMS, repeatable={"type"})
    given = [name for name in SELECTORS if name in q]
    if len(given) > 1:
        raise InvalidRequest(f"a subscription takes one selector; got {', '.join(given)}", field=given[1])
    starts = [name for name in STARTS if name in q]
    if len(starts) > 1:
        raise InvalidRequest(f"a subscription takes one start; got {', '.join(starts)}", field=starts[1])
    if "fromVersion" in q and "stream" not in q:
        raise InvalidRequest("fromVersion needs the stream selector", field="fromVersion")
    selector = Selector(stream=q.get("stream"), types=tuple(q.get("type", ())), type_prefix=q.get("typePrefix"),
                        stream_prefix=q.get("streamPrefix"), stream_pattern=q.get("streamPattern"),
                        payload=q.get("payload"), include_system=include_system(q))
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id is not None:  # a reconnecting EventSource resends the first URL: this wins
        if not (last_event_id.isascii() and last_event_id.isdigit() and len(last_event_id) < 20):
            raise InvalidRequest("Last-Event-ID must be a position (an integer >= 0)", field="Last-Event-ID")
        # the URL's start version still holds: a stream that had not reached it skips its versions below it
        start = Start(position=int(last_event_id) + 1, version=q.get("fromVersion"))
    elif "fromPosition" in q:
        start = Start(position=q["fromPosition"])
    elif "fromVersion" in q:
        start = Start(version=q["fromVersion"])
    else:
        start = Start(position=1) if q.get("start") == "start" else Start()
    return selector, start, q.get("heartbeat", DEFAULT_HEARTBEAT)


# wire forms -------------------------------------------------------------------------------------
def message_json(message: Message) -> bytes:
    if message.kind == "event":
        item = message.item
        if item.wire is None:  # shared by every subscriber the fan-out handed this record to
            item.wire = orjson.dumps({"event": event_json(item.record)})
        return item.wire
    if message.kind == "closed":
        return orjson.dumps({"error": "unavailable", "reason": "shutting_down",
                             "message": "the node is shutting down: resume from position on another node",
                             "position": message.position})
    return orjson.dumps({message.kind: True, "position": message.position})


def sse_frame(message: Message) -> bytes:
    if message.kind == "event":
        item = message.item
        if item.frame is None:
            item.frame = _sse_frame(message)
        return item.frame
    return _sse_frame(message)


def _sse_frame(message: Message) -> bytes:
    data = message_json(message)
    if b"\n" in data or b"\r" in data:  # one data: line per line (JSON whitespace only)
        data = b"\ndata: ".join(data.splitlines())
    name = b"" if message.kind in ("event", "caughtUp") else b"event: %s\n" % message.kind.encode()
    return b"%sid: %d\ndata: %s\n\n" % (name, message.position, data)


def error_json(exc: LogError, position: int) -> bytes:
    return orjson.dumps({"error": exc.code, "message": exc.message, **exc.details, "position": position})


# the handler --------------------------------------------------------------------------------------
async def subscribe(request: web.Request) -> web.StreamResponse:
    selector, start, heartbeat = parse_request(request)
    websocket = web.WebSocketResponse(autoping=True, max_msg_size=4096)
    use_websocket = websocket.can_prepare(request).ok
    if not use_websocket and "text/event-stream" not in request.headers.get("Accept", ""):
        raise InvalidRequest("subscribe with 'Accept: text/event-stream' (Server-Sent Events) or as a WebSocket",
                             field="Accept")
    subscription = await request.app[SUBSCRIPTIONS_KEY].subscribe(selector, start, heartbeat=heartbeat)
    try:
        if use_websocket:
            return await _serve_websocket(request, websocket, subscription)
        return await _serve_sse(request, subscription)
    finally:
        subscription.close()


def _observe_delivery(request: web.Request, batch: list[Message]) -> None:
    """One observation per group commit a live batch delivers (its events share their `created`): per event it
    would cost the fan-out more than the sending itself with many subscribers."""
    now = time.time()
    histogram = request.app[METRICS_KEY].subscription_delivery_latency
    observed = None
    for message in batch:
        if message.live and message.item.record.created != observed:
            observed = message.item.record.created
            histogram.observe(max(0.0, now - observed / 1e6))


async def _serve_sse(request: web.Request, subscription: Subscription) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    batches = subscription.batches()
    forget = on_connection_lost(request, subscription.close)  # its place is free as the subscriber goes
    try:
        async for batch in batches:
            await response.write(b"".join(sse_frame(m) for m in batch))
            _observe_delivery(request, batch)
    except LogError as exc:  # e.g. a record failed its checksum: say where to resume (on another node)
        with contextlib.suppress(ConnectionError):
            await response.write(b"event: error\nid: %d\ndata: %s\n\n"
                                 % (subscription.scanned, error_json(exc, subscription.scanned)))
    except ConnectionError:  # the subscriber went away
        return response
    finally:
        forget()
        await batches.aclose()
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def _serve_websocket(request: web.Request, websocket: web.WebSocketResponse,
                           subscription: Subscription) -> web.WebSocketResponse:
    await websocket.prepare(request)

    async def send() -> None:
        batches = subscription.batches()
        try:
            async for batch in batches:
                for message in batch:
                    await websocket.send_frame(message_json(message), WSMsgType.TEXT)
                _observe_delivery(request, batch)
                if batch[-1].kind == "closed":
                    await websocket.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down")
        except LogError as exc:
            await websocket.send_frame(error_json(exc, subscription.scanned), WSMsgType.TEXT)
            await websocket.close(code=WSCloseCode.TRY_AGAIN_LATER, message=exc.code.encode())
        finally:
            await batches.aclose()

    sender = asyncio.create_task(send())
    try:
        async for _incoming in websocket:  # nothing is expected; reading answers pings and sees the close
            if sender.done():
                break
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        await websocket.close()
    return websocket


TOKEN_PARAMS = {"ttl": v.int_param(subscribe_tokens.MIN_TTL, subscribe_tokens.MAX_TTL)}


async def subscribe_token(request: web.Request) -> web.Response:
    q = v.query_params(request.query, TOKEN_PARAMS)
    await v.refuse_body(request)
    ttl = q.get("ttl", subscribe_tokens.DEFAULT_TTL)
    token, expires = subscribe_tokens.issue(request.app[SETTINGS_KEY].api_tokens, ttl)
    response = json_response({"token": token, "expiresIn": ttl, "expires": rfc3339(expires * 1_000_000)})
    response.set_cookie(subscribe_tokens.COOKIE, token, max_age=ttl, path=subscribe_tokens.SUBSCRIBE_PATH,
                        httponly=True, samesite="Strict")
    return response


def add_routes(app: web.Application, subscriptions: TransientSubscriptions) -> None:
    app[SUBSCRIPTIONS_KEY] = subscriptions

    async def stop_subscriptions(_app: web.Application) -> None:
        await subscriptions.close()

    app.on_shutdown.append(stop_subscriptions)
    app.router.add_get("/v1/subscribe", subscribe, allow_head=False)  # a HEAD would open a stream with no body
    app.router.add_post("/v1/subscribe/token", subscribe_token)
