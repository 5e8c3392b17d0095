"""Shaping replies: JSON responses, events as returned, RFC 3339 times."""
from __future__ import annotations

import datetime
import uuid
from typing import Any

import orjson
from aiohttp import web

from ..storage import Record


def json_response(payload: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json",
                        headers=headers)


def rfc3339(micros: int | None) -> str | None:
    if micros is None:
        return None
    seconds, micro = divmod(micros, 1_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(microsecond=micro)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_json(record: Record) -> dict:
    return {
        "id": str(uuid.UUID(bytes=record.id)),
        "stream": record.stream,
        "version": record.version,
        "position": record.position,
        "type": record.type,
        "data": orjson.Fragment(record.data),
        "metadata": orjson.Fragment(record.metadata),
        "created": rfc3339(record.created),
    }
