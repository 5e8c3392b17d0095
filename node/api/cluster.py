"""Cluster routes and request routing: /v1/cluster, step-down, the internal replication endpoints, and
sending writes (and `consistency=leader` reads) from a follower to the leader."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from ..cluster.auth import REPLY_SIGNATURE_HEADER
from ..cluster.member import TAKEOVER_PATH, ClusterMember, NoInSyncFollower
from ..cluster.replication import FETCH_PATH, EpochMismatch, reply_body, reply_headers
from ..config import NODE_ID
from ..errors import InvalidRequest, LogError, NotLeader, Unavailable
from . import validation as v
from .keys import CLUSTER_KEY, METRICS_KEY, SETTINGS_KEY
from .middleware import COMMITTED_HEADER, FORWARDED_HEADER, error_response
from .shape import json_response, rfc3339

FORWARD_WAIT = 10.0  # how long a follower waits for an election before answering 503
READ_YOUR_WRITE_WAIT = 2.0  # after forwarding an append, how long to wait for it to become visible here
FORWARD_TIMEOUT = 30.0  # longer than the leader's commit timeout, so its answer (even a 503) comes back
FORWARD_CONNECT_TIMEOUT = 2.0  # a leader behind a partition drops the connection attempt: give up on it sooner
NOT_LEADER_PAUSE = 0.05  # between resends to a node that says it does not lead (yet)
PASSED_HEADERS = ("Content-Type", "Authorization", "Accept")

REJECTION_LOG_EVERY = 10.0  # seconds between warnings about refused peer requests of one reason

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("evstore.api")
_last_rejection_logged: dict[str, float] = {}


def _member(request: web.Request) -> ClusterMember | None:
    return request.app.get(CLUSTER_KEY)


def leader_write(handler: Handler) -> Handler:
    """A write runs on the leader: a follower sends it there; a leader that loses leadership before writing
    anything sends it to the new leader."""
    @functools.wraps(handler)
    async def route(request: web.Request) -> web.StreamResponse:
        member = _member(request)
        if member is None:
            return await handler(request)
        if member.role == "leader":
            try:
                return await handler(request)
            except NotLeader:
                if FORWARDED_HEADER in request.headers:
                    raise
        return await forward(request, member, handler, write=True)
    return route


def leader_read(handler: Handler) -> Handler:
    """A read with `consistency=leader` is answered by the leader; any other read by this node's log."""
    @functools.wraps(handler)
    async def route(request: web.Request) -> web.StreamResponse:
        member = _member(request)
        consistency = request.query.get("consistency")
        if consistency not in (None, "any", "leader"):
            raise InvalidRequest("consistency must be 'any' or 'leader'", field="consistency")
        if member is None or consistency != "leader":
            return await handler(request)
        if member.role == "leader":
            try:
                return await _linearizable_read(member, handler, request, FORWARD_WAIT)
            except NotLeader:  # it stopped leading meanwhile: the new leader answers
                if FORWARDED_HEADER in request.headers:
                    raise
        return await forward(request, member, handler, write=False)
    return route


async def _linearizable_read(member: ClusterMember, handler: Handler, request: web.Request, wait: float
                             ) -> web.StreamResponse:
    """Answer a consistency=leader read here, as the leader: only once all it took over is committed, and only
    if its lease held from before the read until after it (no other leader acknowledged anything meanwhile,
    even if this process was paused in between)."""
    if not await member.linearizable(wait):
        if member.role == "leader":
            raise Unavailable("the new leader is still committing what it took over", reason="taking_over")
        raise NotLeader()
    response = await handler(request)
    if member.still_linearizable():
        return response
    raise Unavailable("this node's leadership lapsed during the read; retry", reason="leadership_lost")


async def forward(request: web.Request, member: ClusterMember, handler: Handler, write: bool
                  ) -> web.StreamResponse:
    if FORWARDED_HEADER in request.headers:  # one hop only: the sender thought we lead, and we do not
        raise NotLeader()
    if not write:
        return await _forward(request, member, handler, write)
    member.forwarded_writes += 1  # its reply waits for this node's commit point: the leader sends that at once
    try:
        return await _forward(request, member, handler, write)
    finally:
        member.forwarded_writes -= 1


async def _forward(request: web.Request, member: ClusterMember, handler: Handler, write: bool
                   ) -> web.StreamResponse:
    body = await request.read()
    headers = {k: request.headers[k] for k in PASSED_HEADERS if k in request.headers}
    headers[FORWARDED_HEADER] = member.me.node
    deadline = time.monotonic() + FORWARD_WAIT
    while True:
        leader = await member.wait_for_leader(max(0.0, deadline - time.monotonic()))
        if leader.node == member.me.node:  # this node leads (again): answer here
            try:
                if not write:  # a leader read answered here is held to the leader's rules too
                    return await _linearizable_read(member, handler, request,
                                                    max(0.0, deadline - time.monotonic()))
                return await handler(request)
            except NotLeader:  # lost it before writing anything (or reading): wait for the next leader
                await member.wait_for_leader_change(leader, max(0.0, deadline - time.monotonic()))
                continue
        try:
            status, payload, response_headers = await _send_unless_leader_changes(member, leader, request, body,
                                                                                  headers)
            content_type = response_headers.get("Content-Type", "application/json")
        except aiohttp.ConnectionTimeoutError:
            # the leader is alive for etcd but does not answer this node (a partition drops the packets): nothing
            # was sent, and waiting would hold the request for the whole partition; the client tries another node
            raise Unavailable(f"the leader {leader.node} cannot be reached from this node; nothing was written",
                              reason="leader_unreachable") from None
        except aiohttp.ClientConnectorError:
            # nothing reached the leader, so nothing was written: wait for the next leader and send it there
            if time.monotonic() >= deadline:
                raise Unavailable(f"the leader {leader.node} cannot be reached", reason="leader_unreachable"
                                  ) from None
            await member.wait_for_leader_change(leader, max(0.0, deadline - time.monotonic()))
            continue
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Unavailable(f"the leader {leader.node} did not answer ({type(exc).__name__}); "
                              + ("the outcome of this write is unknown: retry it with the same event ids"
                                 if write else "retry"), reason="leader_unreachable") from None
        if status == 503 and b'"not_leader"' in payload and time.monotonic() < deadline:
            # nothing was written there. Either leadership moved on, or that node won the election a moment
            # ago and is still taking over: wait briefly for news, then send it again
            await member.wait_for_leader_change(leader, min(NOT_LEADER_PAUSE, max(0.0, deadline - time.monotonic())))
            continue
        if write and status == 200:
            await _wait_visible(member, payload)
        elif write and status == 409 and response_headers.get(COMMITTED_HEADER, "").isdigit():
            # a 409 names versions the leader has committed: a read here right after must show them too
            await member.wait_visible(int(response_headers[COMMITTED_HEADER]), READ_YOUR_WRITE_WAIT)
        mime = content_type.split(";")[0].strip() or "application/json"
        return web.Response(status=status, body=payload, content_type=mime,
                            headers={"Retry-After": response_headers["Retry-After"]}
                            if "Retry-After" in response_headers else None)


async def _send_unless_leader_changes(member: ClusterMember, leader, request: web.Request, body: bytes,
                                      headers: dict) -> tuple[int, bytes, CIMultiDict]:
    """Send the request on to `leader`; when another leader takes over before it answers (it may be cut off
    behind a partition that drops the answer), give up on it with a 503 at once: the client retries (a write
    with the same event ids) and reaches the new leader, instead of waiting for the request to time out."""
    async def send() -> tuple[int, bytes, CIMultiDict]:
        timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT, sock_connect=FORWARD_CONNECT_TIMEOUT)
        async with member.session.request(request.method, leader.url + request.path_qs, data=body,
                                          headers=headers, timeout=timeout) as response:
            return response.status, await response.read(), CIMultiDict(response.headers)

    sending = asyncio.ensure_future(send())
    changed = asyncio.ensure_future(member.wait_for_leader_change(leader, FORWARD_TIMEOUT + 1))
    try:
        await asyncio.wait({sending, changed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        changed.cancel()
    if not sending.done():
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sending
        raise Unavailable(f"the leader changed while {leader.node} had the request; its outcome is unknown: "
                          "retry it (a write with the same event ids)", reason="leader_changed")
    return sending.result()


async def _wait_visible(member: ClusterMember, payload: bytes) -> None:
    """Read your own write: hold the reply (briefly) until this node shows the appended position."""
    try:
        position = orjson.loads(payload).get("position")
    except (orjson.JSONDecodeError, AttributeError):
        return
    if isinstance(position, int):
        await member.wait_visible(position, READ_YOUR_WRITE_WAIT)


# routes --------------------------------------------------------------------------------------------
async def cluster_status(request: web.Request) -> web.Response:
    v.query_params(request.query, {})
    member = _member(request)
    settings = request.app[SETTINGS_KEY]
    status = member.status()
    for m in status["members"]:
        if isinstance(m.get("lastSeen"), float):
            m["lastSeen"] = rfc3339(int(m["lastSeen"] * 1_000_000))
    return json_response({"store": settings.store_id, "node": settings.node_id, **status})


async def step_down(request: web.Request) -> web.Response:
    v.query_params(request.query, {})
    await v.refuse_body(request)
    member = _member(request)
    if member.role != "leader":
        leader = await member.wait_for_leader(FORWARD_WAIT)
        try:
            return await forward(request, member, step_down, write=True)
        except Unavailable as exc:
            # the leader changed while it had the request: for a step-down that is the outcome asked for (a 503
            # would have the client retry it and hand leadership away a second time)
            new_leader = await member.wait_for_leader(FORWARD_WAIT) if exc.details.get("reason") == "leader_changed" \
                else None
            if new_leader is None or new_leader.node == leader.node:
                raise
            return json_response({"stepDown": True, "leader": new_leader.node})
    try:
        new_leader = await member.step_down()
    except NoInSyncFollower:
        return error_response(409, "no_in_sync_follower", "no in-sync follower is caught up to take over")
    return json_response({"stepDown": True, "leader": new_leader})


def internal(handler: Handler) -> Handler:
    """An internal route: only a fresh request signed with the cluster secret for this node gets in (see
    cluster/auth.py PeerAuth); the reply, errors included, is signed for that request."""
    @functools.wraps(handler)
    async def route(request: web.Request) -> web.StreamResponse:
        member = _member(request)
        peer = member.peer_auth
        body = await request.read()
        reason = peer.verify_request(request.method, member.me.url, request.raw_path, body, request.headers)
        if reason is not None:
            request.app[METRICS_KEY].peer_auth_rejected.labels(reason=reason).inc()
            now = time.monotonic()
            if now - _last_rejection_logged.get(reason, -REJECTION_LOG_EVERY) >= REJECTION_LOG_EVERY:
                _last_rejection_logged[reason] = now
                log.warning("refused a peer request to %s from %s: %s", request.path, request.remote, reason)
            return error_response(401, "unauthorized", "a valid peer signature is required")
        try:
            response = await handler(request)
        except LogError as exc:
            response = error_response(exc.status, exc.code, exc.message, **exc.details)
        response.headers[REPLY_SIGNATURE_HEADER] = peer.sign_reply(peer.nonce_of(request.headers), response.status,
                                                                   response.headers, response.body or b"")
        return response
    return route


@internal
async def replication_fetch(request: web.Request) -> web.Response:
    member = _member(request)
    try:
        body = orjson.loads(await request.read())
        node, url = str(body["node"]), str(body["url"])
        epoch, first, prev_epoch = int(body["epoch"]), int(body["from"]), int(body["prevEpoch"])
        as_rows = body.get("rows") is True  # a follower of this release; older ones read formats 1 and 2
        eager = body.get("eager", True) is not False  # older followers never ask the leader to hold news
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InvalidRequest("a fetch needs node, url, epoch, from and prevEpoch") from None
    if first < 1:
        raise InvalidRequest("from must be at least 1", field="from")
    if not NODE_ID.match(node):
        raise InvalidRequest("node must be a node id", field="node")
    leading = member.leading
    if leading is None:
        return error_response(409, "not_leader", "this node is not the leader",
                              leaderEpoch=member.leader.epoch if member.leader else 0)
    try:
        reply = await leading.fetch(node, url, epoch, first, prev_epoch, eager=eager)
    except EpochMismatch as exc:
        if exc.stale_leader and epoch > leading.epoch:
            member.deposed_by(epoch)
        return error_response(409, "epoch_mismatch", "the follower and the leader disagree on the epoch",
                              leaderEpoch=exc.leader_epoch)
    if reply.status == "diverged":
        return error_response(409, "diverged", "the follower's log diverges from the leader's",
                              epoch=reply.epoch, end=reply.end)
    return web.Response(body=reply_body(reply, rows=as_rows), content_type="application/octet-stream",
                        headers=reply_headers(reply))


@internal
async def replication_takeover(request: web.Request) -> web.Response:
    try:
        epoch = int(orjson.loads(await request.read())["epoch"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InvalidRequest("takeover needs the leader's epoch") from None
    await _member(request).takeover(epoch)
    return json_response({"ready": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/cluster", cluster_status)
    app.router.add_post("/v1/cluster/step-down", step_down)
    app.router.add_post(FETCH_PATH, replication_fetch)
    app.router.add_post(TAKEOVER_PATH, replication_takeover)
