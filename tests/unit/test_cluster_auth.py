from evstore.node.cluster.auth import (MAX_CLOCK_SKEW, PEER_TOKEN_HEADER, REPLY_SIGNATURE_HEADER, LeaderRecords,
                                       NonceCache, PeerAuth, check_peer_token, peer_token, sign_announcement,
                                       verify_announcement)

FIELDS = {"store": "orders", "node": "n1", "url": "http://127.0.0.1:7001", "proto": "1"}


def test_peer_token_depends_on_secret_and_store():
    token = peer_token("s3cret", "orders")
    assert len(token) == 64 and int(token, 16) >= 0
    assert token == peer_token("s3cret", "orders")
    assert token != peer_token("other", "orders")
    assert token != peer_token("s3cret", "billing")


def test_check_peer_token():
    token = peer_token("s3cret", "orders")
    assert check_peer_token("s3cret", "orders", token)
    assert not check_peer_token("s3cret", "billing", token)
    assert not check_peer_token("other", "orders", token)
    assert not check_peer_token("s3cret", "orders", None)
    assert not check_peer_token("s3cret", "orders", "")
    assert not check_peer_token("s3cret", "orders", token[:-1] + "é")


def test_announcement_signature_verifies_and_ignores_its_own_field():
    sig = sign_announcement("s3cret", FIELDS)
    assert verify_announcement("s3cret", FIELDS, sig)
    assert verify_announcement("s3cret", {**FIELDS, "sig": sig}, sig)
    assert sign_announcement("s3cret", {**FIELDS, "sig": "anything"}) == sig


def test_announcement_signature_detects_changes():
    sig = sign_announcement("s3cret", FIELDS)
    assert not verify_announcement("other", FIELDS, sig)
    assert not verify_announcement("s3cret", {**FIELDS, "url": "http://127.0.0.1:7002"}, sig)
    assert not verify_announcement("s3cret", {**FIELDS, "extra": ""}, sig)
    assert not verify_announcement("s3cret", {k: v for k, v in FIELDS.items() if k != "proto"}, sig)
    assert not verify_announcement("s3cret", FIELDS, sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    assert not verify_announcement("s3cret", FIELDS, None)
    assert not verify_announcement("s3cret", FIELDS, "")


def test_announcement_encoding_is_canonical_and_unambiguous():
    reordered = dict(reversed(list(FIELDS.items())))
    assert list(reordered) != list(FIELDS)
    assert sign_announcement("s3cret", reordered) == sign_announcement("s3cret", FIELDS)
    # a separator inside a value must not let another field set encode alike
    assert sign_announcement("s3cret", {"a": "1\nb=2"}) != sign_announcement("s3cret", {"a": "1", "b": "2"})
    assert sign_announcement("s3cret", {"a=1": ""}) != sign_announcement("s3cret", {"a": "1="})


def test_token_and_signature_labels_differ():
    # a peer token must never pass as an announcement signature (and the reverse)
    assert peer_token("s3cret", "orders") != sign_announcement("s3cret", {})


# -- per-request peer signatures (issue 10, point 4) ---------------------------------------------------

LEADER = "http://10.0.0.1:7113"
BODY = b'{"node":"n2","from":1}'


def test_a_signed_request_verifies_once_for_its_audience_path_and_body():
    sender, receiver = PeerAuth("s3cret-0123456789", "orders"), PeerAuth("s3cret-0123456789", "orders")
    signed = sender.sign_request("POST", LEADER, "/v1/internal/replication/fetch", BODY)
    args = ("POST", LEADER, "/v1/internal/replication/fetch", BODY)
    assert PeerAuth("s3cret-0123456789", "orders").verify_request(*args, signed.headers) is None
    assert receiver.verify_request(*args, signed.headers) is None
    assert receiver.verify_request(*args, signed.headers) == "replayed"
    for changed in (("GET", *args[1:]), ("POST", "http://10.0.0.2:7113", *args[2:]),
                    ("POST", LEADER, "/v1/internal/replication/takeover", BODY), (*args[:3], BODY + b" ")):
        assert PeerAuth("s3cret-0123456789", "orders").verify_request(*changed, signed.headers) == "bad_signature"
    assert PeerAuth("s3cret-0123456789", "billing").verify_request(*args, signed.headers) == "bad_signature"
    assert PeerAuth("another-secret-0123", "orders").verify_request(*args, signed.headers) == "bad_signature"


def test_clock_skew_and_unsigned_requests_are_refused():
    auth = PeerAuth("s3cret-0123456789", "orders")
    args = ("POST", LEADER, "/p", BODY)
    old = auth.sign_request(*args, now=1000.0)
    assert auth.verify_request(*args, old.headers, now=1000.0 + MAX_CLOCK_SKEW + 1) == "clock_skew"
    assert auth.verify_request(*args, old.headers, now=1000.0 + MAX_CLOCK_SKEW - 1) is None
    assert auth.verify_request(*args, {}) == "unsigned"
    legacy = {PEER_TOKEN_HEADER: peer_token("s3cret-0123456789", "orders")}
    assert auth.verify_request(*args, legacy) == "unsigned"  # the old static token, without compat
    assert PeerAuth("s3cret-0123456789", "orders", compat=True).verify_request(*args, legacy) is None


def test_a_reply_is_bound_to_its_request():
    auth = PeerAuth("s3cret-0123456789", "orders")
    signed = auth.sign_request("POST", LEADER, "/p", BODY)
    headers = {"X-Evstore-Epoch": "7", "Content-Type": "application/octet-stream"}
    sig = auth.sign_reply(signed.nonce, 200, headers, b"records")
    good = {**headers, REPLY_SIGNATURE_HEADER: sig}
    assert auth.verify_reply(signed, 200, good, b"records")
    assert not auth.verify_reply(signed, 200, {**good, "X-Evstore-Epoch": "8"}, b"records")
    assert not auth.verify_reply(signed, 409, good, b"records")
    assert not auth.verify_reply(signed, 200, good, b"other")
    assert not auth.verify_reply(auth.sign_request("POST", LEADER, "/p", BODY), 200, good, b"records")
    assert not auth.verify_reply(signed, 200, headers, b"records")


def test_nonce_cache_forgets_expired_nonces_and_is_bounded():
    cache = NonceCache(limit=2)
    assert cache.add("a", 10.0, 0.0) is None and cache.add("a", 10.0, 1.0) == "replayed"
    assert cache.add("b", 20.0, 1.0) is None and cache.add("c", 20.0, 1.0) == "nonce_cache_full"
    assert cache.add("c", 30.0, 10.5) is None  # "a" expired


def test_leader_records_bind_epoch_and_lease():
    records = LeaderRecords("s3cret-0123456789", "orders")
    sealed = records.seal("n1", LEADER, 0x1234, 42)
    assert records.read(sealed, create_revision=42, lease=0x1234).kind == "sealed"
    assert records.read(sealed, create_revision=43, lease=0x1234).reason == "signed for another epoch"
    assert records.read(sealed, create_revision=42, lease=0).reason == "signed for another lease"
    assert LeaderRecords("another-secret-0123", "orders").read(sealed, create_revision=42, lease=0x1234).kind == "forged"
    assert LeaderRecords("s3cret-0123456789", "billing").read(sealed, create_revision=42, lease=0x1234).kind == "forged"
    claim = records.claim("n1", LEADER, 0x1234)
    assert records.read(claim, create_revision=42, lease=0x1234).kind == "claimed"
    assert records.read(claim, create_revision=42, lease=0x9999).kind == "forged"
    tampered = sealed.replace(b"10.0.0.1", b"10.6.6.6")
    assert records.read(tampered, create_revision=42, lease=0x1234).reason == "bad signature"
    unsigned = b'{"node": "n1", "url": "http://10.0.0.1:7113"}'
    assert records.read(unsigned, create_revision=42, lease=0x1234).reason == "unsigned"
    for junk in (b"", b"[]", b"null", b'{"node": 1, "url": "x"}', b"\xff"):
        assert records.read(junk, create_revision=42, lease=0x1234).kind == "forged"
    compat = LeaderRecords("s3cret-0123456789", "orders", accept_legacy=True)
    assert compat.read(unsigned, create_revision=42, lease=0x1234).kind == "legacy"
    assert compat.read(unsigned, create_revision=42, lease=0).kind == "forged"  # an old leader always had a lease
