"""Peer authentication from the cluster secret: a token nodes present on replication requests, and
signatures on discovery announcements. Pure functions; each use has its own label, so a value made for
one purpose never verifies for another."""
from __future__ import annotations

import hashlib
import hmac
import json

PEER_TOKEN_HEADER = "X-Evstore-Peer-Token"
SIGNATURE_FIELD = "sig"

_PEER_TOKEN_LABEL = "evstore-peer-token-v1\n"
_ANNOUNCEMENT_LABEL = "evstore-announcement-v1\n"


def _hmac_hex(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _equal(expected: str, presented: str | None) -> bool:
    if presented is None:
        return False
    # bytes, because compare_digest refuses str with non-ASCII characters (and a peer may send any)
    return hmac.compare_digest(expected.encode(), presented.encode(errors="replace"))


def peer_token(secret: str, store_id: str) -> str:
    return _hmac_hex(secret, _PEER_TOKEN_LABEL + store_id)


def check_peer_token(secret: str, store_id: str, presented: str | None) -> bool:
    return _equal(peer_token(secret, store_id), presented)


def canonical_announcement(fields: dict[str, str]) -> str:
    """The signed text: fields sorted by key, `sig` left out. JSON, so that no key or value can make two
    different field sets encode alike (as `=` or a newline could in a plain key=value join)."""
    items = sorted((key, value) for key, value in fields.items() if key != SIGNATURE_FIELD)
    return json.dumps(items, separators=(",", ":"))


def sign_announcement(secret: str, fields: dict[str, str]) -> str:
    return _hmac_hex(secret, _ANNOUNCEMENT_LABEL + canonical_announcement(fields))


def verify_announcement(secret: str, fields: dict[str, str], signature: str | None) -> bool:
    return _equal(sign_announcement(secret, fields), signature)
