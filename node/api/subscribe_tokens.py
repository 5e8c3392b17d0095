"""Short-lived subscription tokens: browsers' EventSource cannot send `Authorization`, so a holder of a
`read` token may trade it (POST /v1/subscribe/token) for a signed token that authorizes GET /v1/subscribe
only, as `?access_token=` or the `evstore_subscribe_token` cookie, until it expires.

The signing key is derived from the node's API tokens, so every node of a store (one tokens file) accepts
the others' tokens, and removing or changing a token in the file invalidates every subscription token.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Mapping

from aiohttp import web

SUBSCRIBE_PATH = "/v1/subscribe"
QUERY_PARAM = "access_token"
COOKIE = "evstore_subscribe_token"
DEFAULT_TTL = 300
MIN_TTL, MAX_TTL = 10, 3600


def _key(api_tokens: Mapping[str, str]) -> bytes:
    material = "\n".join(sorted(f"{token} {role}" for token, role in api_tokens.items()))
    return hmac.new(b"evstore subscribe tokens v1", material.encode(), hashlib.sha256).digest()


def _signature(key: bytes, expires: int) -> str:
    digest = hmac.new(key, f"subscribe.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(api_tokens: Mapping[str, str], ttl: int, now: float | None = None) -> tuple[str, int]:
    """A token valid for `ttl` seconds, and its expiry (Unix seconds)."""
    expires = int(now if now is not None else time.time()) + ttl
    return f"{expires}.{_signature(_key(api_tokens), expires)}", expires


def is_valid(api_tokens: Mapping[str, str], token: str, now: float | None = None) -> bool:
    expires_text, _, signature = token.partition(".")
    if not (expires_text.isascii() and expires_text.isdigit() and len(expires_text) < 12):
        return False
    expires, now = int(expires_text), now if now is not None else time.time()
    if not now <= expires <= now + MAX_TTL + 1:
        return False
    return hmac.compare_digest(_signature(_key(api_tokens), expires).encode(), signature.encode())


def presented(request: web.Request) -> str | None:
    """The subscription token a request to /v1/subscribe carries (query first, then cookie)."""
    if request.path != SUBSCRIBE_PATH:
        return None
    return request.query.get(QUERY_PARAM) or request.cookies.get(COOKIE)
