"""Shaping replies: JSON responses, events as returned (node/eventjson.py), RFC 3339 times."""
from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..eventjson import event_json, rfc3339_micros, uuid_text  # noqa: F401 (the API's names for them)

JSON_HEADERS = {"Content-Type": "application/json"}  # as a header: aiohttp's content_type= argument costs more


def json_response(payload: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status,
                        headers={**JSON_HEADERS, **headers} if headers else JSON_HEADERS)


def rfc3339(micros: int | None) -> str | None:
    if micros is None:
        return None
    return rfc3339_micros(micros)
