"""JsonErrorHandler.handle_error for the statuses aiohttp gives it outside its parser (the parser's own errors are
tested against a real node in tests/integration/test_bad_input.py): a 500 is the node's bug, a 504 (aiohttp's
handler timeout, which the node does not set) is not. The handler is made without a connection: handle_error
needs only the request."""
from __future__ import annotations

import json
from unittest import mock

from aiohttp.test_utils import make_mocked_request

from evstore.node.api.middleware import JsonErrorHandler


def answer(status: int, exc: BaseException | None = None):
    handler = JsonErrorHandler.__new__(JsonErrorHandler)
    writer = mock.Mock(output_size=0)
    with mock.patch.object(JsonErrorHandler, "log_exception") as logged:
        response = handler.handle_error(make_mocked_request("GET", "/v1/all", writer=writer), status, exc)
    return response, json.loads(response.body), logged


def test_a_handler_timeout_is_answered_as_unavailable_not_as_a_bug():
    response, body, logged = answer(504)
    assert (response.status, body["error"]) == (504, "unavailable")
    assert not logged.called and not response.keep_alive


def test_an_escaped_exception_is_a_500_logged_with_its_traceback():
    failure = RuntimeError("boom")
    response, body, logged = answer(500, failure)
    assert (response.status, body["error"]) == (500, "internal")
    assert logged.call_args.kwargs["exc_info"] is failure and not response.keep_alive
