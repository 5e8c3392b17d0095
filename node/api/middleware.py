"""Cross-cutting request handling: JSON errors, bearer-token roles, and per-route HTTP metrics."""
from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from urllib.parse import unquote_to_bytes

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestPayloadError

from ..errors import InvalidRequest, LogError
from . import subscribe_tokens
from . import validation as v
from .keys import LOG_KEY, METRICS_KEY, SETTINGS_KEY
from .shape import json_response

log = logging.getLogger("evstore.api")
OPEN_PREFIXES = ("/health/", "/metrics")
HTTP_ERROR_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                    405: "method_not_allowed", 408: "request_timeout", 413: "too_large",
                    415: "unsupported_media_type"}
ROLE_RANK = {"read": 0, "write": 1, "admin": 2}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_TYPES = frozenset({"application/json"})
# what aiohttp decodes itself (br and zstd only with optional packages, and it refuses them in its parser)
CONTENT_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
FORWARDED_HEADER = "X-Evstore-Forwarded"  # on a request a follower sends on to the leader
# on the leader's 409 to a forwarded request: its committed position then, which holds the versions the 409 names
COMMITTED_HEADER = "X-Evstore-Committed-Position"
CLIENT_CLOSED = 499  # the status metrics count a request under when its client went away mid-body
_BODY_CUT_SHORT = (http_exceptions.ContentLengthError, http_exceptions.TransferEncodingError)


class AnsweredBodyErrors(logging.Filter):
    """Drops aiohttp's "Unhandled exception" for a body it cannot decode (broken gzip or deflate) when it drains
    the rest of that body after the answer: the client already has its 400 (_error_for), nothing failed here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], RequestPayloadError))


def quiet_answered_body_errors() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, AnsweredBodyErrors) for f in server_log.filters):
        server_log.addFilter(AnsweredBodyErrors())


class JsonErrorHandler(web.RequestHandler):
    """aiohttp's handler of one connection, answering what it answers itself in the node's JSON error shape rather
    than in text/plain: a request its HTTP parser refuses before any middleware runs (a malformed request line,
    header or chunk, a line or header over 8 KiB), with a body encoding it cannot decode (br, zstd) a 415 as any
    other unsupported Content-Encoding is; and, were one ever to escape the middleware, an error of the node.
    A parser's refusal is the client's doing: it is logged at debug level, without the traceback aiohttp logs.
    (ConnectionGate makes the handlers aiohttp's server creates this class: it only adds this method.)"""

    __slots__ = ()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size:  # part of a reply went out already: aiohttp's own handling (it raises)
            return super().handle_error(request, status, exc, message)
        if status == 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            response = internal_error()
        elif status >= 500:  # 504: aiohttp's handler timeout (the node sets none)
            log.warning("could not answer a request from %s in time (%d)", request.remote, status)
            response = error_response(status, "unavailable", "the request could not be answered in time")
        elif isinstance(exc, http_exceptions.ContentEncodingError) and _PARENTHESISED.search(exc.message or ""):
            log.debug("refused a request from %s with a body encoding HTTP parsing cannot decode", request.remote)
            named = _PARENTHESISED.search(exc.message).group(1)  # br or zstd, for which no decoder is installed
            response = error_response(415, "unsupported_media_type",
                                      f"Content-Encoding {named!r} is not supported (gzip, deflate or none)")
        elif isinstance(exc, http_exceptions.ContentEncodingError):  # a deflate body that ends before its stream
            log.debug("refused a request from %s whose body does not decode", request.remote)
            response = error_response(400, "invalid_request", "the body cannot be read: it does not decode as its "
                                      "Content-Encoding says (cut short?)", field="body")
        else:
            log.debug("refused a request from %s that HTTP parsing rejected (%s)", request.remote, type(exc).__name__)
            said = exc.message if isinstance(exc, http_exceptions.HttpProcessingError) else message
            response = error_response(status, HTTP_ERROR_CODES.get(status, "invalid_request"),
                                      f"the request cannot be parsed: {_one_line(str(said or status))}")
        response.force_close()
        return response


_PARENTHESISED = re.compile(r"\((\S+)\)")


def _one_line(text: str) -> str:
    """aiohttp's parser messages on one line, without the caret lines that point into the bytes quoted."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip().strip("^"))


def error_response(status: int, code: str, message: str, headers: dict | None = None, **details
                   ) -> web.Response:
    if status == 503 and "retryAfter" in details:
        headers = {**(headers or {}), "Retry-After": str(max(1, round(details["retryAfter"])))}
    return json_response({"error": code, "message": message, **details}, status=status, headers=headers)


def internal_error() -> web.Response:
    """The answer to a request that met a bug of the node (logged by the caller, with its traceback)."""
    return error_response(500, "internal", "internal error (a bug: please report it)")


def _check_url_is_utf8(request: web.Request) -> None:
    """Percent-encoded bytes that are not UTF-8 are a 400: the router would otherwise leave `%FF` in a stream
    name as three literal characters (so /v1/streams/%FF and /v1/streams/%25FF were the same stream), and the
    query parser would turn them into U+FFFD."""
    raw = request.raw_path
    if "%" not in raw:
        return
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the URL has percent-encoded bytes that are not UTF-8", field="url") from None


async def read_body(request: web.Request) -> bytes:
    """The whole body, or a 408 (closing the connection) when it takes longer than --body-timeout to come:
    a client may not hold a request open with a body that trickles or never ends."""
    timeout = request.app[SETTINGS_KEY].body_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the body did not arrive within {timeout:g} seconds") from None


INTERNAL_PREFIX = "/v1/internal/"


def _check_body_headers(request: web.Request) -> web.Response | None:
    """415 for a body that is not JSON or has an encoding the node cannot undo (no Content-Type: JSON)."""
    if request.method not in BODY_METHODS or request.path.startswith(INTERNAL_PREFIX):
        return None  # peers' requests: their handlers authenticate them first, then read their own body format
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in CONTENT_ENCODINGS:
        return error_response(415, "unsupported_media_type",
                              f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)")
    if "Content-Type" in request.headers and request.body_exists and request.content_type not in JSON_TYPES:
        return error_response(415, "unsupported_media_type",
                              f"the body must be application/json, not {request.content_type!r}")
    return None


async def _get_with_a_body(request: web.Request) -> None:
    """InvalidRequest for a GET whose body says something (validation.refuse_body): a read's parameters are
    query parameters, and a body would be ignored."""
    if request.path.startswith(INTERNAL_PREFIX) or request.match_info.http_exception is not None:
        return None  # a 404 or 405 says more than this would
    await v.refuse_body(request, ": a GET's parameters are query parameters")


_NAMED = (("/v1/streams/", "stream"), ("/v1/snapshots/", "source"), ("/v1/subscriptions/", "name"))


def _empty_name(path: str) -> str | None:
    """The field of a path whose name segment is empty (`/v1/streams/`, `/v1/snapshots//all`), else None."""
    for prefix, field in _NAMED:
        if path.startswith(prefix) and not path[len(prefix):].partition("/")[0]:
            return field
    return None


def _error_for(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, LogError):
        return error_response(exc.status, exc.code, exc.message, **exc.details)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        # aiohttp's exception does not keep the limit as an attribute; the limit is the node's setting.
        limit = request.app[SETTINGS_KEY].max_body_bytes
        return error_response(413, "too_large", f"the body is larger than {limit} bytes", maxBytes=limit)
    if isinstance(exc, web.HTTPException):
        empty = _empty_name(request.path) if exc.status == 404 else None
        if empty is not None:  # no route has an empty name: say what is wrong, as for any other bad name
            return error_response(400, "invalid_request", f"the {empty} name is empty", field=empty)
        code = HTTP_ERROR_CODES.get(exc.status, "error")
        # A 405 must keep the `Allow` header aiohttp puts on it (RFC 9110).
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = error_response(exc.status, code, exc.text or exc.reason, headers=allow)
        if exc.status == 408:
            response.force_close()  # the rest of that body is not worth waiting for
        return response
    if isinstance(exc, RequestPayloadError):  # aiohttp's parser refused the body (its cause says why)
        cause = exc.__cause__ if isinstance(exc.__cause__, http_exceptions.HttpProcessingError) else exc
        response = error_response(400, "invalid_request", f"the body cannot be read: {cause.message}", field="body")
        response.force_close()  # the rest of that body is not worth keeping the connection for
        return response
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return internal_error()


@web.middleware
async def api_middleware(request: web.Request, handler) -> web.StreamResponse:
    """One layer for every request (one layer, because each costs on the hot path): URL check,
    bearer-token roles, JSON errors, and per-route HTTP metrics."""
    in_flight = request.app[METRICS_KEY].http_in_flight
    in_flight.inc()
    try:
        return await _answer(request, handler)
    finally:
        in_flight.dec()


async def _answer(request: web.Request, handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        _check_url_is_utf8(request)
        response = (_authorize(request) or _check_body_headers(request)
                    or (request.body_exists and request.method == "GET" and await _get_with_a_body(request))
                    or await handler(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            _observe(request, exc.status, started)
            raise
        response = _error_for(request, exc)
        _forget_traceback(exc)
    except Exception as exc:
        if _client_gone(request, exc):  # nobody to answer, and not the node's fault: no traceback, no 5xx
            _forget_traceback(exc)
            _observe(request, CLIENT_CLOSED, started)
            return web.Response(status=400)
        response = _error_for(request, exc)
        _forget_traceback(exc)
    if response.status == 409 and FORWARDED_HEADER in request.headers:
        # the follower holds this 409 until it shows what it names, so that a read there right after agrees
        response.headers[COMMITTED_HEADER] = str(request.app[LOG_KEY].visible.position)
    _observe(request, response.status, started)
    return response


def _forget_traceback(exc: BaseException) -> None:
    """Drop the frames an answered error holds. aiohttp keeps a failed body's exception on the request's
    payload, and its traceback holds the frame of `request.read()`, whose body buffer and request point
    back at the payload: a cycle that pins up to a whole body until a full garbage collection (which the
    node's collector settings make rare)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def _client_gone(request: web.Request, exc: Exception) -> bool:
    cut_short = isinstance(exc, ConnectionError) or (isinstance(exc, RequestPayloadError)
                                                     and isinstance(exc.__cause__, _BODY_CUT_SHORT))
    return cut_short and (request.transport is None or request.transport.is_closing())


def _observe(request: web.Request, status: int, started: float) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    request.app[METRICS_KEY].observe_http(request.method, route, status, time.perf_counter() - started,
                                          forwarded=FORWARDED_HEADER in request.headers)


def required_role(request: web.Request) -> str | None:
    path = request.path
    if path.startswith(OPEN_PREFIXES) or path == "/v1/openapi.json" or path.startswith(INTERNAL_PREFIX):
        return None  # /v1/internal/ is for peers, which sign every request with the cluster secret
    if path.startswith("/v1/admin/") or path == "/v1/cluster/step-down":
        return "admin"
    if path == "/v1/subscribe/token":
        return "read"  # it only grants what a read token already may: subscribing
    if path.startswith("/v1/subscriptions/") and path.endswith("/connect"):
        return "write"  # consuming a persistent subscription acks (changes its state), as fetch/ack do
    return "read" if request.method in ("GET", "HEAD", "OPTIONS") else "write"


def _authorize(request: web.Request) -> web.Response | None:
    """None when the request may go on, else the 401/403 reply."""
    tokens = request.app[SETTINGS_KEY].api_tokens
    needed = required_role(request) if tokens else None
    if needed is None:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    role = None
    if scheme.lower() == "bearer":
        for known, known_role in tokens.items():
            # header bytes that are not UTF-8 reach here as surrogates: they can match no token
            if hmac.compare_digest(known.encode(), token.strip().encode("utf-8", "surrogateescape")):
                role = known_role
    if role is None and (presented := subscribe_tokens.presented(request)) is not None:
        role = "read" if subscribe_tokens.is_valid(tokens, presented) else None
    if role is None:
        return error_response(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
    if ROLE_RANK[role] < ROLE_RANK[needed]:
        return error_response(403, "forbidden", f"this needs the {needed} role; the token has {role}")
    return None


MIDDLEWARES = [api_middleware]
