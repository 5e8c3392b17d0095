from evstore.node.cluster.auth import (check_peer_token, peer_token, sign_announcement,
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
