"""The OpenAPI 3 document of the HTTP API, served at /v1/openapi.json."""
from __future__ import annotations

from aiohttp import web

from .shape import json_response


def document() -> dict:
    return {"openapi": "3.0.3", "info": {"title": "evstore", "version": "1"}, "paths": {}}


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(document())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/openapi.json", openapi_json)
