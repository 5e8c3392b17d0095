"""The partition lab says why it cannot run (the partition tests skip with that reason), and its names carry
the PID of their creator so that only dead runs' leftovers are swept."""
from __future__ import annotations

import os

from evstore.client.harness import netns


def test_not_root_is_a_clear_skip_reason(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "need root" in netns.unavailable_reason()


def test_a_missing_iptables_is_named_with_its_package(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "iptables" else f"/usr/sbin/{tool}")
    reason = netns.unavailable_reason()
    assert "iptables" in reason and "make test" in reason


def test_lab_names_carry_the_creators_pid_and_fit_interface_limits():
    lab = netns.NetnsLab(["etcd", "node1"])
    assert lab.namespace("node1").startswith(f"{netns.NAME_PREFIX}-{os.getpid()}-")
    assert netns._NAME.match(lab.namespace("node1")).group(1) == str(os.getpid())
    assert len(lab.host_leg) <= 15  # Linux interface names
