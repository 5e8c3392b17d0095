"""The managed etcd enforces users (issue 10, point 5, the operator's side), with the real kopf
operator against kmock and a real etcd started with the arguments of the operator's etcd StatefulSet
(kmock runs no pods: the test starts etcd from the generated Secret's signing key, then reports the
StatefulSet ready as its controller would)."""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest

from evstore.client.harness.localetcd import EtcdProcess
from evstore.operator import manifests as m
from evstore.operator.etcdauth import prefix_range_end
from evstore.operator.kube import secret_values
from evstore.operator.spec import parse_spec
from evs_helpers import NAMESPACE, STS, api, create_evs, events, eventually, get_object

ETCD_URLS: list[str] = []


@pytest.fixture
def deps_overrides():
    ETCD_URLS.clear()
    return {"etcd_urls": lambda store, namespace: list(ETCD_URLS)}


def _gateway(url: str, path: str, body: dict, token: str | None = None) -> dict:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                     headers={"Authorization": token} if token else {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}") | {"status": exc.code}


def _put(url: str, key: str, token: str | None) -> dict:
    return _gateway(url, "/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                        "value": base64.b64encode(b"x").decode()}, token)


async def test_the_managed_etcd_gets_users_limited_to_the_stores_prefix(k8s, operator, tmp_path):
    await create_evs(k8s, "orders", replicas=3)
    secret = await eventually(lambda: get_object(k8s, "v1/secrets", "orders-etcd-auth"), what="etcd-auth Secret")
    values = secret_values(secret)
    etcd_sts = await eventually(lambda: get_object(k8s, STS, "orders-etcd"), what="etcd StatefulSet")
    [auth_arg] = [a for a in etcd_sts["spec"]["template"]["spec"]["containers"][0]["args"]
                  if a.startswith("--auth-token=")]
    config = get_object(k8s, "v1/configmaps", "orders-config")["data"]
    assert config["EVSTORE_ETCD_USERNAME"] == "default.orders"
    assert config["EVSTORE_ETCD_PASSWORD_FILE"] == "/etc/evstore/etcd/password"

    keys = tmp_path / "etcd-auth"
    keys.mkdir()
    (keys / "jwt.key").write_text(values["jwt-key"])
    etcd = EtcdProcess(tmp_path / "etcd", extra_args=(auth_arg.replace(m.ETCD_AUTH_DIR, str(keys)),))
    etcd.start()
    try:
        url = etcd.client_url
        ETCD_URLS.append(url)
        assert "error" not in _put(url, "/evstore/anything", None), "open before the operator's step"
        await api(k8s, "PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/orders-etcd/status",
                  {"status": {"replicas": 3, "readyReplicas": 3}})
        await eventually(lambda: events(k8s, "orders", "EtcdAuthEnabled"), timeout=20, what="EtcdAuthEnabled")

        assert "error" in _put(url, "/evstore/default.orders/x", None), "anonymous writes are refused"
        token = _gateway(url, "/v3/auth/authenticate", {"name": "default.orders",
                                                         "password": values["node-password"]})["token"]
        assert token.count(".") == 2, "a signed JWT, not a simple token"
        assert "error" not in _put(url, "/evstore/default.orders/leader", token)
        refused = _put(url, "/evstore/default.other/leader", token)
        assert "permission denied" in refused.get("error", "")
        wrong = _gateway(url, "/v3/auth/authenticate", {"name": "default.orders", "password": "not-it"})
        assert "error" in wrong
        root = _gateway(url, "/v3/auth/authenticate", {"name": "root", "password": values["root-password"]})
        assert "token" in root
        # No password in any event.
        posted = str(events(k8s, "orders"))
        assert values["node-password"] not in posted and values["root-password"] not in posted
    finally:
        etcd.stop()


def test_the_prefix_range_is_what_etcdctl_sends():
    assert prefix_range_end(b"/evstore/a.b/") == b"/evstore/a.b0"
    assert prefix_range_end(b"a\xff") == b"b"


def test_manifests_wire_the_etcd_users():
    spec = parse_spec("orders", "shop", {"replicas": 3})
    assert spec.etcd_auth and not parse_spec("orders", "shop", {"replicas": 3, "etcd": {"auth": False}}).etcd_auth
    assert not parse_spec("orders", "shop", {"replicas": 3, "etcd": {"endpoints": ["http://e:2379"]}}).etcd_auth
    pod = m.statefulset(spec)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "etcd-password")
    assert volume["secret"]["items"] == [{"key": "node-password", "path": "password"}]
    etcd = m.etcd_statefulset(spec)["spec"]["template"]["spec"]
    assert etcd["volumes"][0]["secret"]["items"] == [{"key": "jwt-key", "path": "jwt.key"}]
    assert "--auth-token=jwt,priv-key=/etc/etcd-auth/jwt.key,sign-method=HS256,ttl=10m" in \
        etcd["containers"][0]["args"]
