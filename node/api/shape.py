"""Shaping replies: JSON responses, events as returned, RFC 3339 times."""
from __future__ import annotations

import base64
import datetime
import functools
from typing import Any

import orjson
from aiohttp import web

from ..storage import DATA_BINARY, METADATA_BINARY, Record


_JSON_HEADERS = {"Content-Type": "application/json"}  # as a header: aiohttp's content_type= argument costs more


def json_response(payload: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status,
                        headers={**_JSON_HEADERS, **headers} if headers else _JSON_HEADERS)


def rfc3339(micros: int | None) -> str | None:
    if micros is None:
        return None
    return _rfc3339_micros(micros)


@functools.lru_cache(maxsize=8192)
def _rfc3339_micros(micros: int) -> str:
    # the events of one group commit share their `created`, so a page of reads formats few distinct times
    seconds, micro = divmod(micros, 1_000_000)
    return f"{_rfc3339_second(seconds)}.{micro:06d}Z"


@functools.lru_cache(maxsize=4096)
def _rfc3339_second(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event_json(record: Record) -> dict:
    """The event as returned: `data` and `metadata` are the JSON text the client sent, embedded as it is;
    binary payloads come back as `dataBase64`/`metadataBase64`."""
    if not record.flags:
        return {
            "id": uuid_text(record.id),
            "stream": record.stream,
            "version": record.version,
            "position": record.position,
            "type": record.type,
            "data": orjson.Fragment(record.data),
            "metadata": orjson.Fragment(record.metadata),
            "created": _rfc3339_micros(record.created),
        }
    event = {"id": uuid_text(record.id), "stream": record.stream, "version": record.version,
             "position": record.position, "type": record.type}
    if record.flags & DATA_BINARY:
        event["dataBase64"] = base64.b64encode(record.data).decode("ascii")
    else:
        event["data"] = orjson.Fragment(record.data)
    if record.flags & METADATA_BINARY:
        event["metadataBase64"] = base64.b64encode(record.metadata).decode("ascii")
    else:
        event["metadata"] = orjson.Fragment(record.metadata)
    event["created"] = rfc3339(record.created)
    return event
