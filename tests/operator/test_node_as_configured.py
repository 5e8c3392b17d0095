"""A real node process started exactly as the operator's manifests configure a store's pod.

The ConfigMap's settings (envFrom), the container's env (the cluster secret from the generated
Secret, fields of pod 0), its args and the API tokens file from the generated Secret volume are
resolved as the kubelet would (podenv.py); only host, port and data directory are the local
process's own (NodeProcess passes them as flags, which win over the ConfigMap's variables).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

from evstore.operator import manifests as m
from evstore.operator.spec import parse_spec
from podenv import container_environment, mounted_args

TOKENS = {"admin": "admin-token-0123456789abcdef", "write": "write-token-0123456789abcdef",
          "read": "read-token-0123456789abcdef"}


def _request(url: str, *, method: str = "GET", token: str | None = None, body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method=method),
                                    timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_store_configured_by_the_operator_refuses_requests_without_a_token(node_factory, tmp_path):
    spec = parse_spec("orders", "shop", {})
    secrets = {spec.secret_ref.name: {"secret": "cluster-secret-0123456789abcdef"},
               spec.tokens_secret: m.api_tokens_secret(spec, TOKENS)["stringData"]}
    pod = m.statefulset(spec)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = container_environment(container, configmaps={m.configmap_name("orders"): m.configmap(spec)["data"]},
                                secrets=secrets,
                                fields={"metadata.name": "orders-0", "status.podIP": "127.0.0.1"})
    args = mounted_args(pod, container, secrets=secrets, root=tmp_path / "mounts")
    assert container["command"] == ["evstore", "serve"]
    node = node_factory("orders-0", args=tuple(args), env=env)

    url = node.url
    append = {"events": [{"type": "Placed", "data": {}}]}
    assert _request(f"{url}/v1/streams/order-1") == 401
    assert _request(f"{url}/v1/streams/order-1", method="POST", body=append) == 401
    assert _request(f"{url}/v1/cluster") == 401
    assert _request(f"{url}/v1/streams/order-1", method="POST", body=append, token=TOKENS["read"]) == 403
    assert _request(f"{url}/v1/streams/order-1", method="POST", body=append, token=TOKENS["write"]) == 200
    assert _request(f"{url}/v1/streams/order-1", token=TOKENS["read"]) == 200
    assert _request(f"{url}/v1/cluster", token=TOKENS["admin"]) == 200
    # Probes and Prometheus need no token.
    assert _request(f"{url}/health/ready") == 200 and _request(f"{url}/metrics") == 200
