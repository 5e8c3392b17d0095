"""Peer authentication from the cluster secret: per-request signatures on the internal routes (and on their
replies), signed leader records, and signatures on discovery announcements. Each use signs under its own
label, so a value made for one purpose never verifies for another.

Internal requests (`PeerAuth`): the sender signs method, audience (the receiver's advertised URL), path, body
digest, timestamp and a random nonce. The receiver accepts a signature once (nonce cache) and only within
`MAX_CLOCK_SKEW` of its clock, so a captured request is worth nothing elsewhere or later. The reply is signed
over the request's nonce, the status, the body digest and every X-Evstore-* header, so the sender knows the
answer comes from a holder of the secret and belongs to its request.

Leader records (`LeaderRecords`): the epoch is the leader key's etcd create revision, known only after the
key exists. So a campaign writes a *claim* (node, url, lease id; signed) in the transaction that creates the
key, and then *seals* it: rewrites the value, under the same lease and only while the key is still that claim,
with the epoch added to the signed fields. A node accepts a leader only from a sealed record whose signed
epoch equals the key's create revision and whose signed lease is the key's lease: a record copied to another
key version, or re-put without the lease, does not verify. A claim means "an election is being decided".
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Mapping

# the previous version's static token (accepted only with --peer-auth-compat, see README "Rolling upgrades")
PEER_TOKEN_HEADER = "X-Evstore-Peer-Token"
SIGNATURE_FIELD = "sig"

PEER_TIME_HEADER = "X-Evstore-Peer-Time"
PEER_NONCE_HEADER = "X-Evstore-Peer-Nonce"
PEER_SIGNATURE_HEADER = "X-Evstore-Peer-Signature"
REPLY_SIGNATURE_HEADER = "X-Evstore-Reply-Signature"
MAX_CLOCK_SKEW = 15.0  # seconds a signed request may be older or newer than the receiver's clock
# nonces remembered at most, each until its request is too old anyway (at most 2 * MAX_CLOCK_SKEW): a few
# thousand fetches a second fit; beyond, requests are refused (and counted) rather than memory grow unbounded
NONCE_CACHE_LIMIT = 200_000

_PEER_TOKEN_LABEL = "evstore-peer-token-v1\n"
_ANNOUNCEMENT_LABEL = "evstore-announcement-v1\n"
_REQUEST_LABEL = "evstore-peer-request-v2"
_REPLY_LABEL = "evstore-peer-reply-v2"
_CLAIM_LABEL = "evstore-leader-claim-v2"
_LEADER_LABEL = "evstore-leader-v2"


def _hmac_hex(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _equal(expected: str, presented: str | None) -> bool:
    if presented is None:
        return False
    # bytes, because compare_digest refuses str with non-ASCII characters (and a peer may send any)
    return hmac.compare_digest(expected.encode(), presented.encode(errors="replace"))


def _fields(*values: object) -> str:
    """An unambiguous encoding of the signed fields (no separator inside a value can shift them)."""
    return json.dumps([str(v) for v in values], separators=(",", ":"))


def peer_token(secret: str, store_id: str) -> str:
    return _hmac_hex(secret, _PEER_TOKEN_LABEL + store_id)


def check_peer_token(secret: str, store_id: str, presented: str | None) -> bool:
    return _equal(peer_token(secret, store_id), presented)


# -- internal requests -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignedRequest:
    headers: dict[str, str]
    nonce: str


class NonceCache:
    """The nonces of accepted requests, each kept until its request would be refused for its age anyway."""

    def __init__(self, limit: int = NONCE_CACHE_LIMIT) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._order: collections.deque[tuple[float, str]] = collections.deque()  # (expiry, nonce), about sorted

    def add(self, nonce: str, expires: float, now: float) -> str | None:
        """None when `nonce` is new (and remembers it until `expires`), else why not."""
        while self._order and self._order[0][0] < now:
            self._seen.discard(self._order.popleft()[1])
        if nonce in self._seen:
            return "replayed"
        if len(self._seen) >= self._limit:
            return "nonce_cache_full"
        self._seen.add(nonce)
        self._order.append((expires, nonce))
        return None


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _reply_headers_signed(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in headers.items()
                  if k.lower().startswith("x-evstore-") and k.lower() != REPLY_SIGNATURE_HEADER.lower())


class PeerAuth:
    """Signs and verifies the requests nodes send each other, and their replies. One per node: it holds the
    nonces it has accepted. With `compat`, the previous version's static peer token is accepted too."""

    def __init__(self, secret: str, store_id: str, *, compat: bool = False) -> None:
        self._key = _hmac_hex(secret, _fields(_REQUEST_LABEL, store_id))
        self._store_id = store_id
        self._legacy_token = peer_token(secret, store_id)
        self.compat = compat
        self._nonces = NonceCache()

    def _sign(self, *values: object) -> str:
        return hmac.new(self._key.encode(), _fields(*values).encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _origin(url: str) -> str:
        return url.rstrip("/").lower()

    def sign_request(self, method: str, audience: str, path: str, body: bytes, *,
                     now: float | None = None) -> SignedRequest:
        """Headers for one request to the node advertised at `audience` (scheme://host:port)."""
        stamp = f"{time.time() if now is None else now:.3f}"
        nonce = secrets.token_hex(16)
        signature = self._sign(_REQUEST_LABEL, method.upper(), self._origin(audience), path, body_digest(body),
                               stamp, nonce)
        return SignedRequest({PEER_TIME_HEADER: stamp, PEER_NONCE_HEADER: nonce, PEER_SIGNATURE_HEADER: signature},
                             nonce)

    def legacy_headers(self) -> dict[str, str]:
        """The previous version's static token: only for a leader of that version, and only in compat mode."""
        return {PEER_TOKEN_HEADER: self._legacy_token}

    def verify_request(self, method: str, audience: str, path: str, body: bytes, headers: Mapping[str, str], *,
                       now: float | None = None) -> str | None:
        """None when the request is authentic and fresh, else the reason it is not (no secret in it)."""
        now = time.time() if now is None else now
        signature = headers.get(PEER_SIGNATURE_HEADER)
        if signature is None:
            if self.compat and _equal(self._legacy_token, headers.get(PEER_TOKEN_HEADER)):
                return None
            return "unsigned"
        stamp, nonce = headers.get(PEER_TIME_HEADER, ""), headers.get(PEER_NONCE_HEADER, "")
        try:
            sent = float(stamp)
        except ValueError:
            return "malformed"
        if not 16 <= len(nonce) <= 64:
            return "malformed"
        expected = self._sign(_REQUEST_LABEL, method.upper(), self._origin(audience), path, body_digest(body),
                              stamp, nonce)
        if not _equal(expected, signature):
            return "bad_signature"
        if abs(now - sent) > MAX_CLOCK_SKEW:
            return "clock_skew"
        return self._nonces.add(nonce, sent + MAX_CLOCK_SKEW, now)

    def nonce_of(self, headers: Mapping[str, str]) -> str:
        return headers.get(PEER_NONCE_HEADER, "")

    def sign_reply(self, request_nonce: str, status: int, headers: Mapping[str, str], body: bytes) -> str:
        return self._sign(_REPLY_LABEL, request_nonce, status, body_digest(body),
                          json.dumps(_reply_headers_signed(headers)))

    def verify_reply(self, request: SignedRequest, status: int, headers: Mapping[str, str], body: bytes) -> bool:
        presented = None
        for k, v in headers.items():
            if k.lower() == REPLY_SIGNATURE_HEADER.lower():
                presented = v
        return _equal(self.sign_reply(request.nonce, status, headers, body), presented)


# -- leader records ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeaderRecord:
    kind: str  # "sealed" (a leader), "claimed" (an election being decided), "legacy" (unsigned, previous
    #            version; honoured only in compat mode), "forged" (anything else: ignored)
    node: str = ""
    url: str = ""
    reason: str = ""


class LeaderRecords:
    """Writes and reads the value of the leader key (see the module docstring)."""

    def __init__(self, secret: str, store_id: str, *, accept_legacy: bool = False) -> None:
        self._key = _hmac_hex(secret, _fields(_LEADER_LABEL, store_id))
        self._store_id = store_id
        self.accept_legacy = accept_legacy

    def _sign(self, *values: object) -> str:
        return hmac.new(self._key.encode(), _fields(self._store_id, *values).encode(), hashlib.sha256).hexdigest()

    def claim(self, node: str, url: str, lease: int) -> bytes:
        """A fresh claim (its nonce tells this campaign's claim from a copy of an earlier one)."""
        nonce = secrets.token_hex(8)
        return json.dumps({"node": node, "url": url, "lease": lease, "nonce": nonce,
                           "claim": self._sign(_CLAIM_LABEL, node, url, lease, nonce)}).encode()

    def seal(self, node: str, url: str, lease: int, epoch: int) -> bytes:
        return json.dumps({"node": node, "url": url, "lease": lease, "epoch": epoch,
                           SIGNATURE_FIELD: self._sign(_LEADER_LABEL, node, url, lease, epoch)}).encode()

    def read(self, value: bytes, *, create_revision: int, lease: int) -> LeaderRecord:
        """What the key's value says, given the key's create revision and lease as etcd reports them."""
        try:
            data = json.loads(value)
            node, url = data["node"], data["url"]
            if not isinstance(data, dict) or not isinstance(node, str) or not isinstance(url, str):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            return LeaderRecord("forged", reason="not a leader record")
        signed_lease = data.get("lease")
        if SIGNATURE_FIELD in data:
            if data.get("epoch") != create_revision:
                return LeaderRecord("forged", node, url, "signed for another epoch")
            if signed_lease != lease or not isinstance(signed_lease, int):
                return LeaderRecord("forged", node, url, "signed for another lease")
            if not _equal(self._sign(_LEADER_LABEL, node, url, signed_lease, create_revision), data[SIGNATURE_FIELD]):
                return LeaderRecord("forged", node, url, "bad signature")
            return LeaderRecord("sealed", node, url)
        if "claim" in data:
            if signed_lease != lease or not isinstance(signed_lease, int) or not _equal(
                    self._sign(_CLAIM_LABEL, node, url, signed_lease, data.get("nonce")), data["claim"]):
                return LeaderRecord("forged", node, url, "bad claim signature")
            return LeaderRecord("claimed", node, url)
        if self.accept_legacy and lease and set(data) == {"node", "url"}:
            return LeaderRecord("legacy", node, url)
        return LeaderRecord("forged", node, url, "unsigned")


# -- discovery announcements ---------------------------------------------------------------------------------

def canonical_announcement(fields: dict[str, str]) -> str:
    """The signed text: fields sorted by key, `sig` left out. JSON, so that no key or value can make two
    different field sets encode alike (as `=` or a newline could in a plain key=value join)."""
    items = sorted((key, value) for key, value in fields.items() if key != SIGNATURE_FIELD)
    return json.dumps(items, separators=(",", ":"))


def sign_announcement(secret: str, fields: dict[str, str]) -> str:
    return _hmac_hex(secret, _ANNOUNCEMENT_LABEL + canonical_announcement(fields))


def verify_announcement(secret: str, fields: dict[str, str], signature: str | None) -> bool:
    return _equal(sign_announcement(secret, fields), signature)
