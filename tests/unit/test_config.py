"""Settings: flags win over EVSTORE_* variables, variables over defaults; bad values stop the node."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evstore.node.config import ConfigError, load_settings


def test_defaults():
    s = load_settings([], {})
    assert (s.store_id, s.host, s.port, s.data_dir, s.durability) == ("default", "127.0.0.1", 7113, Path("data"),
                                                                       "sync")
    assert s.max_body_bytes == 16 * 1024 * 1024 and s.discovery_interfaces == ("127.0.0.1",)
    assert s.url == "http://127.0.0.1:7113"


def test_flags_win_over_environment():
    env = {"EVSTORE_PORT": "9000", "EVSTORE_STORE_ID": "orders", "EVSTORE_DURABILITY": "interval"}
    s = load_settings(["--port", "9100"], env)
    assert (s.port, s.store_id, s.durability) == (9100, "orders", "interval")


@pytest.mark.parametrize("argv, env, words", [
    (["--port", "0"], {}, "--port"),
    ([], {"EVSTORE_PORT": "http"}, "EVSTORE_PORT"),
    (["--durability", "fast"], {}, "sync, interval"),
    (["--store-id", "Orders!"], {}, "DNS label"),
    (["--max-body-bytes", "10"], {}, "--max-body-bytes"),
    (["--log-level", "loud"], {}, "debug, info"),
    (["--advertise-url", "node-1:7113"], {}, "http(s)://"),
    (["--cluster-secret", "short"], {}, "16 characters"),
    (["--discovery", "carrier-pigeon"], {}, "zeroconf"),
    (["--api-tokens-file", "/nonexistent/tokens"], {}, "cannot read"),
    (["--etcd-endpoints", "http://127.0.0.1:2379"], {}, "cluster secret is required"),
    (["--etcd-endpoints", "127.0.0.1:2379", "--cluster-secret", "s" * 16], {}, "http://HOST:PORT"),
    (["--lease-ttl", "1"], {}, "from 2 to 60"),
    (["--cluster-size", "0"], {}, "--cluster-size"),
    (["--cluster-size", "3", "--min-in-sync", "4"], {}, "no write could ever be acknowledged"),
])
def test_invalid_settings_are_named(argv, env, words):
    with pytest.raises(ConfigError, match=None) as info:
        load_settings(argv, env)
    assert words in str(info.value)


def test_tokens_file(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# comment\nreader-token-0123456789 read\nadmin-token-0123456789 admin\n")
    s = load_settings(["--api-tokens-file", str(tokens)], {})
    assert s.api_tokens == {"reader-token-0123456789": "read", "admin-token-0123456789": "admin"}
    tokens.write_text("abc superuser\n")
    with pytest.raises(ConfigError, match="TOKEN ROLE"):
        load_settings(["--api-tokens-file", str(tokens)], {})
    # one token on two lines: which role it has is a guess (the last line used to win, silently)
    tokens.write_text("admin-token-0123456789 admin\nadmin-token-0123456789 read\n")
    with pytest.raises(ConfigError, match=":2: a token of an earlier line again, with another role") as refused:
        load_settings(["--api-tokens-file", str(tokens)], {})
    assert "admin-token-0123456789" not in str(refused.value)
    tokens.write_text("admin-token-0123456789 admin\nadmin-token-0123456789 admin\n")  # the same line twice: fine
    assert load_settings(["--api-tokens-file", str(tokens)], {}).api_tokens == {"admin-token-0123456789": "admin"}
    from evstore.operator.manifests import tokens_file_problem  # the operator refuses what the node would
    assert "line 2" in tokens_file_problem("admin-token-0123456789 admin\nadmin-token-0123456789 read\n",
                                           admin="admin-token-0123456789")


def test_node_refuses_to_start_with_a_clear_message(tmp_path):
    out = subprocess.run([sys.executable, "-m", "evstore.node", "--port", "99999", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 2
    assert "--port='99999': must be an integer from 1 to 65535" in out.stderr


# -- etcd access and peer authentication (issue 10, points 5 and 10) --------------------------------------

SECRET_ARGS = ["--cluster-secret", "s" * 16]


def test_etcd_tls_and_credentials(tmp_path):
    ca, password = tmp_path / "ca.pem", tmp_path / "password"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    password.write_text("etcd-password\n")
    s = load_settings([*SECRET_ARGS, "--etcd-endpoints", "https://etcd-0:2379,https://etcd-1:2379",
                       "--etcd-ca-file", str(ca), "--etcd-username", "orders"],
                      {"EVSTORE_ETCD_PASSWORD_FILE": str(password)})
    assert s.etcd_endpoints == ("https://etcd-0:2379", "https://etcd-1:2379")
    assert (s.etcd_ca_file, s.etcd_username, s.etcd_password) == (ca, "orders", "etcd-password")
    assert "etcd-password" not in repr(s) and "s" * 16 not in repr(s)


@pytest.mark.parametrize("extra, words", [
    (["--etcd-endpoints", "http://a:2379,https://b:2379"], "all http:// or all https://"),
    (["--etcd-endpoints", "http://a:2379", "--etcd-ca-file", "CA"], "https:// etcd endpoints only"),
    (["--etcd-endpoints", "https://a:2379", "--etcd-ca-file", "/nonexistent/ca.pem"], "not a readable file"),
    (["--etcd-endpoints", "http://a:2379", "--etcd-username", "orders"], "go together"),
    (["--etcd-endpoints", "http://a:2379", "--etcd-password-file", "/nonexistent/pw"], "cannot read"),
    (["--peer-auth-compat", "maybe"], "true or false"),
])
def test_invalid_etcd_access_is_named(tmp_path, extra, words):
    (tmp_path / "CA").write_text("x")
    extra = [str(tmp_path / "CA") if a == "CA" else a for a in extra]
    with pytest.raises(ConfigError) as info:
        load_settings([*SECRET_ARGS, *extra], {})
    assert words in str(info.value)


def test_peer_auth_compat_switch():
    assert load_settings([], {}).peer_auth_compat is False
    assert load_settings(["--peer-auth-compat"], {}).peer_auth_compat is True
    assert load_settings(["--peer-auth-compat", "false"], {"EVSTORE_PEER_AUTH_COMPAT": "true"}).peer_auth_compat is False
    assert load_settings([], {"EVSTORE_PEER_AUTH_COMPAT": "true"}).peer_auth_compat is True


def test_a_wrong_secret_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        load_settings(["--cluster-secret", "too-short-xyz"], {})
    assert "too-short-xyz" not in str(info.value) and "16 characters" in str(info.value)


@pytest.mark.parametrize("args, words", [
    (["--max-connections", "0"], "--max-connections"),
    (["--max-connections", "1000001"], "--max-connections"),
    (["--max-connections", "many"], "--max-connections"),
    (["--max-connections", "10", "--max-subscribers", "20"], "at least --max-subscribers"),
])
def test_max_connections_is_validated(args, words):
    with pytest.raises(ConfigError) as info:
        load_settings(args, {})
    assert words in str(info.value)


def test_max_connections_default_and_variable():
    assert load_settings([], {}).max_connections == 4096
    assert load_settings(["--max-subscribers", "8"], {"EVSTORE_MAX_CONNECTIONS": "16"}).max_connections == 16
    assert load_settings(["--max-subscribers", "5000"], {}).max_connections == 6024  # room for every subscriber
