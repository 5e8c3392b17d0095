"""`evstore check` and the workload + checker pair against a real single node."""
from __future__ import annotations

import asyncio
import json
import uuid

from click.testing import CliRunner

from evstore.client import EvstoreClient
from evstore.client.cli import cli
from evstore.client.harness.checker import History, check_cluster
from evstore.client.harness.workload import Workload
from nodeproc import free_port


def append_some(url: str) -> int:
    with EvstoreClient(url) as client:
        for i in range(5):
            client.append(f"check-{i % 2}", [{"type": "Added", "data": {"i": i}}])
        client.append("check-0", [{"type": "Batch", "data": {"n": n}} for n in range(300)])
        client.set_stream_metadata("check-1", {"custom": {"owner": "test"}})
    return 5 + 300 + 1  # the metadata is one system event in $all


def test_check_passes_on_a_healthy_node(node):
    events = append_some(node.url)
    runner = CliRunner()

    human = runner.invoke(cli, ["check", "--node", node.url])
    assert human.exit_code == 0, human.output
    assert human.output.strip() == f"ok: 1 node, {events} events, 2 streams"

    machine = runner.invoke(cli, ["--url", node.url, "check", "--json"])
    assert machine.exit_code == 0, machine.output
    report = json.loads(machine.output)
    assert report["ok"] is True and report["problems"] == []
    assert report["events"] == events and report["heads"] == {node.url: events}


def test_check_fails_when_a_node_cannot_be_read(node):
    append_some(node.url)
    dead = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["check", "--node", node.url, "--node", dead, "--converge-timeout", "0"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("FAILED:")
    assert f"{dead}: could not be read" in result.output
    assert "$all heads did not agree within 0s" in result.output


async def test_workload_history_checks_out(node):
    workload = Workload([node.url], writers=8, streams_per_writer=2, batch=(1, 4), max_appends=300,
                        stream_prefix=f"wl-{uuid.uuid4().hex[:6]}")
    # someone else writes first to one of writer 0's streams: its first append is rejected with 409
    taken = workload.stream_names(0)[0]
    with EvstoreClient(node.url) as client:
        event_id = str(uuid.uuid4())
        reply = client.append(taken, [{"id": event_id, "type": "Squatter", "data": {}}])
    workload.history.record(taken, [event_id], "any", "ok", reply)

    await asyncio.wait_for(workload.run(asyncio.Event()), timeout=60)

    history: History = workload.history
    assert workload.acknowledged >= 300
    assert history.count("ok") == workload.acknowledged + 1
    assert history.count("failed") == 1 and history.count("unknown") == 0
    assert workload.errors == {"wrong_expected_version": 1}

    report = await check_cluster([node.url], history, converge_timeout=10)
    assert report.ok, report.summary()
    assert report.acknowledged == workload.acknowledged + 1
    assert report.failed == 1 and report.unknown_present == report.unknown_absent == 0
    assert report.events == workload.acknowledged_events + 1
    assert report.streams == 16
