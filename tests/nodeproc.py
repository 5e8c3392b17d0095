"""Tests use the packaged node launcher (evstore.client.harness.localnode)."""
from evstore.client.harness.localnode import NodeProcess, free_port

__all__ = ["NodeProcess", "free_port"]
