"""`evstore operator` entry point pieces that need no API server."""
from __future__ import annotations

import pytest
from kubernetes_asyncio.client import Configuration

from evstore.operator.handlers import connection_info
from evstore.operator.main import watched_namespace


def test_namespace_comes_from_the_argument_or_watch_namespace(monkeypatch):
    monkeypatch.setenv("WATCH_NAMESPACE", "from-env")
    assert watched_namespace("given") == "given"
    assert watched_namespace(None) == "from-env"
    monkeypatch.delenv("WATCH_NAMESPACE")
    with pytest.raises(SystemExit, match="namespace"):
        watched_namespace(None)


def test_kopf_logs_in_with_the_same_credentials_as_the_client():
    configuration = Configuration(host="https://10.0.0.1:443")
    configuration.api_key["BearerToken"] = "Bearer abc"
    configuration.ssl_ca_cert = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    info = connection_info(configuration)
    assert (info.server, info.token, info.ca_path, info.insecure) == (
        "https://10.0.0.1:443", "abc", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", False)
