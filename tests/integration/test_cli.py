"""The `evstore` command line against a real node: in-process through CliRunner, and the installed
console script as a subprocess for the entry point, `serve` and the progress bar."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from evstore.client.cli import cli
from nodeproc import NodeProcess

EVSTORE = str(Path(sys.executable).parent / "evstore")


@pytest.fixture
def run(shared_node):
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(cli, ["--url", shared_node.url, *args], input=input)

    return invoke


def unique(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_events(path: Path, count: int, type_: str = "Imported") -> Path:
    with path.open("w") as f:
        for i in range(count):
            f.write(json.dumps({"type": type_, "data": {"i": i}}) + "\n")
    return path


def test_append_one_event_and_read_it_back(run):
    stream = unique()
    result = run("append", stream, "--type", "OrderPlaced", "--data", '{"sku": "A-1"}', "--metadata", '{"by": "cli"}')
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"appended to {stream}: version 1, position " + result.output.split()[-1]

    event_id = str(uuid.uuid4())
    second = run("--json", "append", stream, "--type", "OrderShipped", "--id", event_id, "--expected-version", "1")
    assert second.exit_code == 0, second.output
    assert json_lines(second.output)[0]["version"] == 2

    human = run("read", stream)
    assert human.exit_code == 0, human.output
    lines = human.output.splitlines()
    assert lines[0].split()[:4] == ["POSITION", "STREAM", "VERSION", "TYPE"]
    assert lines[1].split()[1:4] == [stream, "1", "OrderPlaced"] and '{"sku":"A-1"}' in lines[1]
    assert lines[2].split()[1:4] == [stream, "2", "OrderShipped"]

    machine = run("read", stream, "--json")
    (page,) = json_lines(machine.output)
    assert page["version"] == 2
    assert page["events"][0]["metadata"] == {"by": "cli"}
    assert page["events"][1]["id"] == event_id

    backward = json_lines(run("--json", "read", stream, "--backward", "--limit", "1").output)[0]
    assert [e["version"] for e in backward["events"]] == [2]
    assert backward["next"] == 1


def test_json_given_to_the_cli_is_stored_as_written(run, shared_node, tmp_path):
    """--data, --metadata, a JSON Lines file, an append-many file and a snapshot keep every number as written
    (they went through json.loads and orjson: long decimals rounded, 1E2 became 100.0, 1e400 null, and an
    integer past 64 bits was a traceback)."""
    def stored(path: str) -> bytes:
        with urllib.request.urlopen(shared_node.url + path, timeout=30) as reply:
            return reply.read()

    data = '{"d": 0.1000000000000000000001, "e": 1E2, "big": 123456789012345678901234567890}'
    one, lines, many, snap = unique(), unique(), unique(), unique()
    assert run("append", one, "--type", "A", "--data", data, "--metadata", '{"m": 1.50}').exit_code == 0
    assert b'"data":' + data.encode() + b',"metadata":{"m": 1.50}' in stored(f"/v1/streams/{one}")
    exact = '{"n":0.10000000000000000001,"b":123456789012345678901234567890,"e":1E2}'
    (tmp_path / "e.jsonl").write_text('{"type": "A", "data": %s}\n' % exact)
    assert run("append", lines, "--file", str(tmp_path / "e.jsonl"), "--no-progress").exit_code == 0
    assert b'"data":' + exact.encode() in stored(f"/v1/streams/{lines}")
    (tmp_path / "m.json").write_text('[{"stream": "%s", "events": [{"type": "A", "data": %s}]}]' % (many, exact))
    assert run("append-many", "--file", str(tmp_path / "m.json")).exit_code == 0
    assert b'"data":' + exact.encode() in stored(f"/v1/streams/{many}")
    result = run("snapshot", "put", snap, "--version", "1", "--type", "S", "--data", "123456789012345678901234567890.5")
    assert result.exit_code == 0, result.output
    assert b'"data":123456789012345678901234567890.5' in stored(f"/v1/snapshots/{snap}")
    # what the store does not take is the server's 400 (exit 1), never a null stored in its place
    result = run("append", one, "--type", "A", "--data", "1e400")
    assert result.exit_code == 1 and "double's range" in result.output
    result = run("snapshot", "put", snap, "--version", "99999999999999999999", "--type", "S")
    assert result.exit_code == 1 and "version" in result.output
    assert json.loads(stored(f"/v1/streams/{one}"))["version"] == 1


def test_what_the_cli_prints_of_a_reply_keeps_every_number_as_stored(run):
    """--json printed each reply through Python floats: 1.50 came out as 1.5 and 1E2 as 100.0."""
    stream = unique()
    data = '{"n":1.50,"b":123456789012345678901234567890,"e":1E2,"d":0.1000000000000000000001}'
    assert run("append", stream, "--type", "A", "--data", data).exit_code == 0
    printed = run("--json", "read", stream)
    assert printed.exit_code == 0 and '"data":' + data in printed.output, printed.output
    printed = run("--json", "read", stream, "--all-pages")
    assert printed.exit_code == 0 and '"data":' + data in printed.output, printed.output
    followed = run("--json", "subscribe", "--stream", stream, "--from", "start", "--count", "1")
    assert followed.exit_code == 0 and '"data":' + data in followed.output, followed.output
    table = run("read", stream)
    assert table.exit_code == 0 and '"n":1.50' in table.output and '"e":1E2' in table.output, table.output


def test_wrong_expected_version_is_one_line_on_stderr_and_exit_1(run):
    stream = unique()
    assert run("append", stream, "--type", "A").exit_code == 0
    result = run("append", stream, "--type", "A", "--expected-version", "no_stream")
    assert result.exit_code == 1
    assert result.output.startswith("error: wrong_expected_version: ")
    assert len(result.output.strip().splitlines()) == 1


def test_append_file_in_batches_then_read_all_pages(run, tmp_path):
    stream = unique("bulk")
    path = write_events(tmp_path / "events.jsonl", 2500)
    result = run("--json", "append", stream, "--file", str(path), "--expected-version", "no_stream")
    assert result.exit_code == 0, result.output
    replies = json_lines(result.output)
    assert [(r["fromVersion"], r["version"]) for r in replies] == [(1, 1000), (1001, 2000), (2001, 2500)]

    pages = json_lines(run("--json", "read", stream, "--all-pages", "--limit", "1000").output)
    assert len(pages) == 3
    data = [e["data"]["i"] for page in pages for e in page["events"]]
    assert data == list(range(2500))

    human = run("read", stream, "--all-pages", "--limit", "1000", "--from", "2401")
    lines = human.output.splitlines()
    assert lines[0].startswith("POSITION") and len(lines) == 101
    assert "more:" not in human.output


def test_append_file_from_stdin(run):
    stream = unique("stdin")
    lines = "".join(json.dumps({"type": "T", "data": i}) + "\n" for i in range(3))
    result = run("append", stream, "--file", "-", input=lines)
    assert result.exit_code == 0, result.output
    assert f"appended 3 events to {stream} in 1 request" in result.output


def test_bad_events_file_appends_nothing(run, tmp_path):
    stream = unique()
    path = tmp_path / "bad.jsonl"
    path.write_text('{"type": "A", "data": 1}\n{"type": "A", "data": 2}\nnot json\n')
    result = run("append", stream, "--file", str(path))
    assert result.exit_code == 2
    assert "line 3" in result.output
    missing = run("read", stream)
    assert missing.exit_code == 1 and "stream_not_found" in missing.output


def test_read_all_with_filters(run):
    prefix = unique("flt") + "-"
    run("append", prefix + "a", "--type", "Placed")
    run("append", prefix + "a", "--type", "Shipped")
    run("append", prefix + "b", "--type", "Placed")
    pages = json_lines(run("--json", "read", "$all", "--stream-prefix", prefix, "--all-pages").output)
    assert [e["type"] for p in pages for e in p["events"]] == ["Placed", "Shipped", "Placed"]
    shipped = json_lines(run("--json", "read", "$all", "--stream-prefix", prefix, "--type", "Shipped",
                             "--all-pages").output)
    assert [e["stream"] for p in shipped for e in p["events"]] == [prefix + "a"]
    pattern = run("read", "$all", "--stream-pattern", prefix + "b*", "--type-prefix", "Pla", "--all-pages")
    rows = pattern.output.splitlines()[1:]
    assert [r.split()[1] for r in rows] == [prefix + "b"]


def test_streams_info_and_delete(run):
    prefix = unique("lst") + "-"
    for suffix in ("x", "y", "z"):
        assert run("append", prefix + suffix, "--type", "T").exit_code == 0

    listed = json_lines(run("--json", "streams", "--prefix", prefix).output)[0]
    assert [s["stream"] for s in listed["streams"]] == [prefix + "x", prefix + "y", prefix + "z"]
    paged = run("streams", "--prefix", prefix, "--limit", "2")
    assert paged.output.splitlines()[-1] == f"more: --after {prefix}y"
    rest = json_lines(run("--json", "streams", "--prefix", prefix, "--after", prefix + "y").output)[0]
    assert [s["stream"] for s in rest["streams"]] == [prefix + "z"]

    info = json_lines(run("info", prefix + "x", "--json").output)[0]
    assert info["version"] == 1 and info["deleted"] == "no"
    assert "deleted:  no" in run("info", prefix + "x").output

    assert run("delete", prefix + "x").output.strip() == f"deleted {prefix}x (soft)"
    soft = run("read", prefix + "x")
    assert soft.exit_code == 1 and soft.output.startswith("error: stream_not_found:")

    stale = run("delete", prefix + "y", "--expected-version", "5")
    assert stale.exit_code == 1 and "wrong_expected_version" in stale.output
    assert run("delete", prefix + "y", "--hard", "--expected-version", "1").exit_code == 0
    hard = run("read", prefix + "y")
    assert hard.exit_code == 1 and hard.output.startswith("error: stream_deleted:")


def test_node_info(run):
    human = run("info")
    assert human.exit_code == 0, human.output
    assert "role:" in human.output and "single" in human.output
    both = json_lines(run("--json", "info").output)[0]
    assert both["cluster"]["role"] == "single"
    assert both["info"]["store"] == "default"


def test_reserved_stream(run):
    result = run("append", "$reserved", "--type", "T")
    assert result.exit_code == 1
    assert result.output.startswith("error: reserved_stream:")


def test_verify_on_the_server_and_offline(run, shared_node):
    run("append", unique("verify"), "--type", "T")
    online = json_lines(run("--json", "verify").output)[0]
    assert online["checked"] >= 1 and online["corrupt"] == []

    offline = run("verify", "--data", str(shared_node.data_dir), "--no-progress")
    assert offline.exit_code == 0, offline.output
    assert offline.output.startswith("ok: ") and "none corrupt" in offline.output


def test_verify_offline_without_a_log_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["verify", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "no evstore log" in result.output


def test_verify_offline_finds_a_flipped_byte(node_factory):
    node = node_factory("corrupt")
    marker = "x" * 64
    result = CliRunner().invoke(cli, ["--url", node.url, "append", "victim", "--type", "T", "--data",
                                      json.dumps({"marker": marker})])
    assert result.exit_code == 0, result.output
    assert node.terminate() == 0
    db = next(p for p in node.data_dir.iterdir() if p.suffix == ".db")
    raw = bytearray(db.read_bytes())
    where = raw.find(marker.encode())
    assert where >= 0, "the event is stored in the main database file after a clean shutdown"
    raw[where] ^= 0x01
    db.write_bytes(bytes(raw))

    found = CliRunner().invoke(cli, ["--json", "verify", "--data", str(node.data_dir)])
    assert found.exit_code == 1, found.output
    report = json_lines(found.output)[0]
    assert report["corrupt"] == [1]


# -- the installed console script ------------------------------------------------------------------

def test_console_script_progress_bar_on_stderr(shared_node, tmp_path):
    stream = unique("bar")
    path = write_events(tmp_path / "events.jsonl", 2001)
    env = {**os.environ, "EVSTORE_URL": shared_node.url}
    shown = subprocess.run([EVSTORE, "append", stream, "--file", str(path)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "/2001" in shown.stderr, "a tqdm bar counts the events"
    assert shown.stdout.strip() == (f"appended 2001 events to {stream} in 3 requests: stream version 2001, "
                                    f"position {shown.stdout.split()[-1]}")

    quiet = subprocess.run([EVSTORE, "append", unique("bar"), "--file", str(path), "--no-progress"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_console_script_connection_refused_exits_3():
    result = subprocess.run([EVSTORE, "--url", "http://127.0.0.1:1", "streams"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 3
    assert "make run" in result.stderr


class ServedByCli(NodeProcess):
    """A node started as `evstore serve ...`, the way `make run` and the container start it."""

    def command(self) -> list[str]:
        return [EVSTORE, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
                *self.args]


def test_serve_forwards_flags_to_the_node(tmp_path):
    data = tmp_path / "served" / "data"
    data.mkdir(parents=True)
    node = ServedByCli(data, args=("--store-id", "from-cli"))
    try:
        node.start()
        result = CliRunner().invoke(cli, ["--url", node.url, "--json", "info"])
        assert json_lines(result.output)[0]["info"]["store"] == "from-cli"
        assert node.terminate() == 0
    finally:
        node.stop()


def test_serve_rejects_bad_flags_through_the_node():
    result = subprocess.run([EVSTORE, "serve", "--port", "not-a-port"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "port" in result.stderr.lower()
    helped = subprocess.run([EVSTORE, "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--data-dir" in helped.stdout
