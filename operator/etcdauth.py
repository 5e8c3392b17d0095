"""Turn on authentication in a store's managed etcd, through etcd's JSON gateway (/v3/auth/...).

Idempotent, so every pass may run it: a root user (password from the store's etcd-auth Secret), a role
that may read and write only the store's key prefix, the nodes' user with that role (its password set
again each time, so a regenerated Secret takes effect), then `auth enable`. Once enabled, the calls
authenticate as root. etcd's messages name users and roles, never passwords; neither do ours.
"""
from __future__ import annotations

import base64
from typing import Any, Mapping, Sequence

import aiohttp


class EtcdAuthError(RuntimeError):
    """etcd refused a step (or no endpoint answered)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_range_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with `prefix` (what `etcdctl --prefix` sends)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


async def _call(session: aiohttp.ClientSession, url: str, path: str, body: Mapping[str, Any],
                token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": token} if token else {}
    async with session.post(f"{url}{path}", json=dict(body), headers=headers) as reply:
        payload = await reply.json(content_type=None)
        if reply.status != 200 or "error" in payload:
            raise EtcdAuthError(str(payload.get("error") or payload.get("message") or reply.status))
        return payload


async def _ignoring_exists(session: aiohttp.ClientSession, url: str, path: str, body: Mapping[str, Any],
                           token: str | None) -> None:
    try:
        await _call(session, url, path, body, token)
    except EtcdAuthError as exc:
        if "already exists" not in str(exc):
            raise


async def ensure_etcd_auth(urls: Sequence[str], *, root_password: str, user: str, password: str,
                           prefix: str, timeout: float = 10.0) -> bool:
    """Make etcd enforce users with `user` limited to `prefix`. True when auth was enabled now, False
    when it already was. Raises EtcdAuthError when no endpoint could do it."""
    last: Exception | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for url in urls:
            try:
                return await _ensure(session, url.rstrip("/"), root_password=root_password, user=user,
                                     password=password, prefix=prefix.encode())
            except (aiohttp.ClientError, OSError, TimeoutError, EtcdAuthError) as exc:
                last = exc
    raise EtcdAuthError(f"could not set up etcd authentication: {last}")


async def _ensure(session: aiohttp.ClientSession, url: str, *, root_password: str, user: str, password: str,
                  prefix: bytes) -> bool:
    token = None
    try:
        token = (await _call(session, url, "/v3/auth/authenticate",
                             {"name": "root", "password": root_password}))["token"]
    except EtcdAuthError as exc:
        if "authentication is not enabled" not in str(exc):
            raise
    await _ignoring_exists(session, url, "/v3/auth/user/add", {"name": "root", "password": root_password}, token)
    await _call(session, url, "/v3/auth/user/grant", {"user": "root", "role": "root"}, token)
    await _ignoring_exists(session, url, "/v3/auth/role/add", {"name": user}, token)
    await _call(session, url, "/v3/auth/role/grant", {"name": user, "perm": {
        "permType": "READWRITE", "key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix))}}, token)
    await _ignoring_exists(session, url, "/v3/auth/user/add", {"name": user, "password": password}, token)
    await _call(session, url, "/v3/auth/user/changepw", {"name": user, "password": password}, token)
    await _call(session, url, "/v3/auth/user/grant", {"user": user, "role": user}, token)
    if token is None:
        await _call(session, url, "/v3/auth/enable", {})
        return True
    return False
