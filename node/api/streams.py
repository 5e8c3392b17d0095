"""Handlers for /v1/streams and /v1/all: parse, call the log, shape the reply."""
from __future__ import annotations

import time
from typing import Awaitable

import orjson
from aiohttp import web

from ..eventjson import reply_with_events
from ..log import ANY, AllFilter, AllSlice, AppendResult, Log, StreamSlice
from . import validation as v
from .cluster import leader_read, leader_write
from .keys import LOG_KEY, METRICS_KEY
from .middleware import read_body
from .shape import JSON_HEADERS, json_response, rfc3339



def _log(request: web.Request) -> Log:
    return request.app[LOG_KEY]


def _stream(request: web.Request, writing: bool = False) -> str:
    return v.stream_name(request.match_info["stream"], writing=writing)


CONSISTENCY = {"consistency": v.choice_param("any", "leader")}
READ_PARAMS = {"from": v.int_param(1), "limit": v.int_param(1, v.MAX_READ_LIMIT),
               "direction": v.choice_param("forward", "backward"), **CONSISTENCY}


async def append(request: web.Request) -> web.Response:
    stream = _stream(request, writing=True)
    v.query_params(request.query, {})  # expectedVersion belongs in the body: a query one would be ignored
    expected, events = await v.append_body_in_slices(await read_body(request))
    result = await _counted(request, _log(request).append(stream, expected, events), len(events))
    return json_response(_append_reply(result))


async def append_many(request: web.Request) -> web.Response:
    v.query_params(request.query, {})
    appends = await v.multi_append_body(await read_body(request))
    count = sum(len(entry.events) for entry in appends)
    result = await _counted(request, _log(request).append_many(appends), count)
    return json_response({"results": [_append_reply(r) for r in result.results], "position": result.position})


def _append_reply(result: AppendResult) -> dict:
    return {"stream": result.stream, "fromVersion": result.from_version, "version": result.version,
            "position": result.position}


async def _counted(request: web.Request, appending: Awaitable, events: int):
    """Await an append, counting it in the metrics (one append, however many streams it writes)."""
    metrics = request.app.get(METRICS_KEY)
    started = time.perf_counter()
    try:
        result = await appending
    except Exception as exc:
        if metrics is not None:
            metrics.appends.labels(result=getattr(exc, "code", "error")).inc()
        raise
    if metrics is not None:
        metrics.append_latency.observe(time.perf_counter() - started)
        metrics.appends_ok.inc()
        metrics.events_appended.inc(events)
        metrics.bytes_appended.inc(result.bytes_written)
    return result


async def read_stream(request: web.Request) -> web.Response:
    stream = _stream(request)
    q = v.query_params(request.query, READ_PARAMS)
    started = time.perf_counter()
    page = await _log(request).read_stream(stream, start=q.get("from"), limit=q.get("limit", v.DEFAULT_READ_LIMIT),
                                           backward=q.get("direction") == "backward", rendered=True)
    _observe_read(request, "stream", started, len(page.records))
    return web.Response(body=stream_reply(page), headers=JSON_HEADERS)


def stream_reply(page: StreamSlice) -> bytes:
    """The reply's JSON with the page's events spliced in as rendered by the reader thread."""
    return reply_with_events(b'{"stream":%s,"version":%d,"events":' % (orjson.dumps(page.stream), page.version),
                             page.records, b',"next":%s}' % _cursor(page.next))


def _cursor(position: int | None) -> bytes:
    return b"null" if position is None else b"%d" % position


async def stream_info(request: web.Request) -> web.Response:
    v.query_params(request.query, CONSISTENCY)
    info = await _log(request).stream_info(_stream(request))
    return json_response({"stream": info.stream, "version": info.version, "created": rfc3339(info.created),
                          "updated": rfc3339(info.updated), "deleted": info.deleted, "metadata": info.metadata})


# a listing's `next` may be a metadata stream's name (`$$` and a name of 512 bytes): taken back as `after`
LIST_PARAMS = {"prefix": v.stream_name_param, "after": v.stream_name_param, "limit": v.int_param(1, v.MAX_LIST_LIMIT),
               **CONSISTENCY}


async def list_streams(request: web.Request) -> web.Response:
    q = v.query_params(request.query, LIST_PARAMS)
    rows, nxt = await _log(request).list_streams(q.get("prefix"), q.get("after"),
                                                 q.get("limit", v.DEFAULT_READ_LIMIT))
    return json_response({"streams": [{"stream": r.stream, "version": r.version, "updated": rfc3339(r.updated)}
                                      for r in rows], "next": nxt})


DELETE_PARAMS = {"expectedVersion": v.expected_param, "hard": v.bool_param}


async def delete_stream(request: web.Request) -> web.Response:
    stream = _stream(request, writing=True)
    q = v.query_params(request.query, DELETE_PARAMS)
    await v.refuse_body(request, ": expectedVersion and hard are query parameters")
    await _log(request).delete(stream, q.get("expectedVersion", ANY), q.get("hard", False))
    return web.Response(status=204)


async def get_metadata(request: web.Request) -> web.Response:
    v.query_params(request.query, CONSISTENCY)
    return json_response(await _log(request).get_metadata(_stream(request)))


async def put_metadata(request: web.Request) -> web.Response:
    stream = _stream(request, writing=True)
    v.query_params(request.query, {})
    metadata = v.metadata_body(await read_body(request))
    return json_response(await _log(request).set_metadata(stream, metadata))


ALL_PARAMS = {**READ_PARAMS, "type": v.text_param(v.MAX_TYPE_CHARS), "typePrefix": v.text_param(v.MAX_TYPE_CHARS),
              "streamPrefix": v.text_param(), "streamPattern": v.text_param(), "includeSystem": v.bool_param}


def include_system(q: dict) -> bool:
    """`$`-streams are left out unless asked for, or named by a stream filter that starts with `$`."""
    return q.get("includeSystem", False) or any((q.get(name) or "").startswith("$")
                                                for name in ("stream", "streamPrefix", "streamPattern"))


async def read_all(request: web.Request) -> web.Response:
    q = v.query_params(request.query, ALL_PARAMS, repeatable={"type"})
    filters = AllFilter(q.get("type", ()), q.get("typePrefix"), q.get("streamPrefix"), q.get("streamPattern"),
                        include_system=include_system(q))
    started = time.perf_counter()
    page = await _log(request).read_all(start=q.get("from"), limit=q.get("limit", v.DEFAULT_READ_LIMIT),
                                        backward=q.get("direction") == "backward", filters=filters, rendered=True)
    _observe_read(request, "all", started, len(page.records))
    return web.Response(body=all_reply(page), headers=JSON_HEADERS)


def all_reply(page: AllSlice) -> bytes:
    return reply_with_events(b'{"events":', page.records, b',"next":%s,"head":%d}' % (_cursor(page.next), page.head))


def _observe_read(request: web.Request, kind: str, started: float, count: int) -> None:
    metrics = request.app.get(METRICS_KEY)
    if metrics is not None:
        metrics.read_latency.labels(kind=kind).observe(time.perf_counter() - started)
        metrics.events_read.labels(kind=kind).inc(count)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/all", leader_read(read_all))
    app.router.add_get("/v1/streams", leader_read(list_streams))
    app.router.add_post("/v1/streams", leader_write(append_many))
    app.router.add_post("/v1/streams/{stream}", leader_write(append))
    app.router.add_get("/v1/streams/{stream}", leader_read(read_stream))
    app.router.add_delete("/v1/streams/{stream}", leader_write(delete_stream))
    app.router.add_get("/v1/streams/{stream}/info", leader_read(stream_info))
    app.router.add_get("/v1/streams/{stream}/metadata", leader_read(get_metadata))
    app.router.add_put("/v1/streams/{stream}/metadata", leader_write(put_metadata))

