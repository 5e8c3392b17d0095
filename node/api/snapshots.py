"""Handlers for /v1/snapshots: parse, call the log, shape the reply. A snapshot of a source (an aggregate's
stream, say) at a version is kept in the log in `$snapshot-<source>` (see node/snapshots.py)."""
from __future__ import annotations

import base64

import orjson
from aiohttp import web

from ..snapshots import Snapshot
from ..storage import DATA_BINARY, METADATA_BINARY
from . import validation as v
from .cluster import leader_read, leader_write
from .keys import LOG_KEY
from .middleware import read_body
from .shape import json_response, rfc3339
from .streams import CONSISTENCY


def _source(request: web.Request) -> str:
    return v.snapshot_source(request.match_info["source"])


def snapshot_json(snapshot: Snapshot, *, payload: bool = True) -> dict:
    """A snapshot as returned: data and metadata as the client sent them (binary ones in base64)."""
    shaped: dict = {"source": snapshot.source, "version": snapshot.version, "type": snapshot.type}
    if payload:
        if snapshot.flags & DATA_BINARY:
            shaped["dataBase64"] = base64.b64encode(snapshot.data).decode("ascii")
        else:
            shaped["data"] = orjson.Fragment(snapshot.data)
        if snapshot.flags & METADATA_BINARY:
            shaped["metadataBase64"] = base64.b64encode(snapshot.metadata).decode("ascii")
        else:
            shaped["metadata"] = orjson.Fragment(snapshot.metadata)
    shaped["created"] = rfc3339(snapshot.created)
    shaped["position"] = snapshot.position
    return shaped


async def save_snapshot(request: web.Request) -> web.Response:
    source = _source(request)
    v.query_params(request.query, {})  # everything a save takes is in its body
    version, snapshot, keep = v.snapshot_body(await read_body(request))
    saved = await request.app[LOG_KEY].save_snapshot(source, version, snapshot, keep=keep)
    return json_response({"source": source, "version": saved.version, "position": saved.position})


READ_PARAMS = {"maxVersion": v.int_param(0), **CONSISTENCY}


async def read_snapshot(request: web.Request) -> web.Response:
    source = _source(request)
    q = v.query_params(request.query, READ_PARAMS)
    return json_response(snapshot_json(await request.app[LOG_KEY].read_snapshot(source, q.get("maxVersion"))))


ALL_PARAMS = {"minVersion": v.int_param(0), "maxVersion": v.int_param(0),
              "direction": v.choice_param("forward", "backward"), "limit": v.int_param(1, v.MAX_READ_LIMIT),
              **CONSISTENCY}


async def read_snapshots(request: web.Request) -> web.Response:
    source = _source(request)
    q = v.query_params(request.query, ALL_PARAMS)
    found, nxt = await request.app[LOG_KEY].read_snapshots(
        source, min_version=q.get("minVersion", 0), max_version=q.get("maxVersion"),
        backward=q.get("direction") == "backward", limit=q.get("limit", v.DEFAULT_READ_LIMIT))
    return json_response({"source": source, "snapshots": [snapshot_json(s) for s in found], "next": nxt})


async def delete_snapshots(request: web.Request) -> web.Response:
    source = _source(request)
    v.query_params(request.query, {})
    await v.refuse_body(request)
    await request.app[LOG_KEY].delete_snapshots(source)
    return web.Response(status=204)


LIST_PARAMS = {"prefix": v.text_param(v.MAX_SOURCE_BYTES), "after": v.text_param(v.MAX_SOURCE_BYTES),
               "limit": v.int_param(1, v.MAX_LIST_LIMIT), **CONSISTENCY}


async def list_snapshots(request: web.Request) -> web.Response:
    q = v.query_params(request.query, LIST_PARAMS)
    found, nxt = await request.app[LOG_KEY].list_snapshots(q.get("prefix"), q.get("after"),
                                                           q.get("limit", v.DEFAULT_READ_LIMIT))
    return json_response({"snapshots": [snapshot_json(s, payload=False) for s in found], "next": nxt})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/snapshots", leader_read(list_snapshots))
    app.router.add_put("/v1/snapshots/{source}", leader_write(save_snapshot))
    app.router.add_get("/v1/snapshots/{source}", leader_read(read_snapshot))
    app.router.add_delete("/v1/snapshots/{source}", leader_write(delete_snapshots))
    app.router.add_get("/v1/snapshots/{source}/all", leader_read(read_snapshots))
