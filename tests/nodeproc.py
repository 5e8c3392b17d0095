"""Tests use the packaged node launcher (evstore.client.localnode)."""
from evstore.client.localnode import NodeProcess, free_port

__all__ = ["NodeProcess", "free_port"]
