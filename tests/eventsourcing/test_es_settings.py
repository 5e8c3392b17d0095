"""Settings from the environment: EVSTORE_TOKEN reaches a node that requires tokens, per application
(`<NAME>_EVSTORE_TOKEN`) as eventsourcing's environments allow; bad settings are clear errors."""
from __future__ import annotations

from uuid import UUID

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import OperationalError, ProgrammingError

from evstore.eventsourcing import Factory


class Orders(Application[UUID]):
    pass


def test_token_from_the_environment(node_factory, tmp_path, monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.write_text("writer-secret-0123456789 write\nreader-secret-0123456789 read\n")
    node = node_factory("secured", args=("--api-tokens-file", str(tokens)))
    monkeypatch.setenv("EVSTORE_URL", node.url)
    with pytest.raises(OperationalError, match="unauthorized"):
        Orders().save(Aggregate())
    monkeypatch.setenv("ORDERS_EVSTORE_TOKEN", "reader-secret-0123456789")
    with pytest.raises(ProgrammingError, match="forbidden"):  # a missing privilege, as psycopg reports it
        Orders().save(Aggregate())
    monkeypatch.setenv("ORDERS_EVSTORE_TOKEN", "writer-secret-0123456789")
    app = Orders()
    try:
        assert [r.notification.id for r in app.save(Aggregate())] == [1]
    finally:
        app.close()


@pytest.mark.parametrize("setting, value, message", [
    ("ORIGINATOR_ID_TYPE", "int", "ORIGINATOR_ID_TYPE"),
    ("EVSTORE_TIMEOUT", "soon", "EVSTORE_TIMEOUT"),
    ("EVSTORE_STREAM_PREFIX", "$orders-", "system streams"),
    # checked when the factory is made, not at the first request
    ("EVSTORE_URL", "not a url", "EVSTORE_URL"),
    ("EVSTORE_URL", "127.0.0.1:7113", "EVSTORE_URL"),
    ("EVSTORE_URL", "ftp://127.0.0.1/", "EVSTORE_URL"),
    ("EVSTORE_URL", "http://127.0.0.1:99999", "EVSTORE_URL"),
    ("EVSTORE_TIMEOUT", "-1", "EVSTORE_TIMEOUT"),
    ("EVSTORE_TIMEOUT", "0", "EVSTORE_TIMEOUT"),
    ("EVSTORE_TIMEOUT", "nan", "EVSTORE_TIMEOUT"),
    ("EVSTORE_RECONNECT_TIMEOUT", "-1", "EVSTORE_RECONNECT_TIMEOUT"),
    ("EVSTORE_RECONNECT_TIMEOUT", "soon", "EVSTORE_RECONNECT_TIMEOUT"),
])
def test_bad_settings_are_clear_errors(setting, value, message):
    with pytest.raises(OSError, match=message):
        Factory({setting: value})


def test_an_unreachable_node_is_operational_error():
    from uuid import uuid4

    from eventsourcing.persistence import StoredEvent, Tracking

    from evstore.client.harness.localnode import free_port

    factory = Factory({"EVSTORE_URL": f"http://127.0.0.1:{free_port()}", "EVSTORE_TIMEOUT": "5"})
    try:
        recorder = factory.process_recorder()
        with pytest.raises(OperationalError):
            recorder.insert_events([StoredEvent(uuid4(), 1, "t:T", b"")])
        with pytest.raises(OperationalError):
            recorder.select_events(uuid4())
        with pytest.raises(OperationalError):
            recorder.max_notification_id()
        with pytest.raises(OperationalError):
            recorder.insert_tracking(Tracking("upstream", 1))
    finally:
        factory.close()


def test_a_script_that_never_closes_its_application_exits(evstore_node, tmp_path):
    """Application.__del__ closes the client at interpreter exit, when its loop thread (a daemon) no longer
    runs: that close waited for the loop for ever."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text("from eventsourcing.application import Application\n"
                      "from eventsourcing.domain import Aggregate\n"
                      "app = Application()\n"
                      "a = Aggregate()\n"
                      "app.save(a)\n"
                      "print('saved', app.repository.get(a.id).version)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "saved 1\n", done
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_live_subscribe_raises_once_its_node_is_gone_past_the_reconnect_timeout(node_factory, monkeypatch):
    import threading
    import time
    import urllib.request

    node = node_factory("goes-away")
    monkeypatch.setenv("EVSTORE_URL", node.url)
    monkeypatch.setenv("EVSTORE_RECONNECT_TIMEOUT", "1")
    app = Application()
    try:
        app.save(Aggregate())
        subscription = app.recorder.subscribe(gt=0)
        assert next(subscription).id == 1
        outcome: list = []

        def follow() -> None:
            try:
                outcome.append(next(subscription))
            except Exception as exc:  # what the test asserts on
                outcome.append(exc)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        deadline = time.monotonic() + 30
        while b"evstore_subscribers 1.0" not in urllib.request.urlopen(node.url + "/metrics", timeout=10).read():
            assert time.monotonic() < deadline, "the live subscription never connected"
            time.sleep(0.05)  # the node's gauge has no event a test could await
        node.kill()
        follower.join(timeout=60)
        assert not follower.is_alive(), "the subscription still waits for a node that is gone"
        assert len(outcome) == 1 and isinstance(outcome[0], OperationalError), outcome
        subscription.stop()
    finally:
        app.close()


def test_applications_whose_names_begin_alike_keep_apart_logs(evstore_node, monkeypatch):
    """`Orders-` used to be a prefix of the streams of an application named `Orders-EU`: Orders counted the
    other's events as its notifications and failed to read their originator ids."""
    monkeypatch.setenv("EVSTORE_URL", evstore_node.url)

    class Shop(Application[UUID]):
        name = "Shop"

    class ShopEU(Application[UUID]):
        name = "Shop-EU"

    shop, shop_eu = Shop(), ShopEU()
    try:
        shop_eu.save(Aggregate())
        mine = Aggregate()
        shop.save(mine)
        notifications = shop.recorder.select_notifications(start=1, limit=10)
        assert [n.originator_id for n in notifications] == [mine.id]
        assert shop.recorder.max_notification_id() == notifications[0].id
        assert len(shop_eu.recorder.select_notifications(start=1, limit=10)) == 1
    finally:
        shop.close()
        shop_eu.close()
