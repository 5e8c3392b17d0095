"""HTTP helpers the API tests share."""
from __future__ import annotations


async def call(http, method, path, **kwargs):
    """(status, body) of one request: the JSON body decoded, any other as text."""
    async with http.request(method, path, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body
