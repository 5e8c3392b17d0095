"""CLI rendering, events files and usage errors, without a server."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from evstore.client import errors, output
from evstore.client.cli import cli
from evstore.client.events_file import EventsFileError, batched, read_events

EVENT = {"id": "e1", "stream": "order-1", "version": 3, "position": 1042, "type": "OrderShipped",
         "data": {"sku": "A-1", "qty": 2}, "metadata": {}, "created": "2026-11-22T20:41:23.123456Z"}


# -- output -------------------------------------------------------------------------------------

def test_to_json_is_one_compact_line():
    text = output.to_json({"a": [1, 2], "b": "é\n"})
    assert "\n" not in text
    assert json.loads(text) == {"a": [1, 2], "b": "é\n"}


def test_compact_cuts_long_values():
    assert output.compact({"a": 1}) == '{"a":1}'
    cut = output.compact({"text": "x" * 200}, width=20)
    assert len(cut) == 20 and cut.endswith("…")


def test_table_aligns_columns_and_right_aligns_numbers():
    text = output.table(["NAME", "N"], [("a", 5), ("long-name", 1234), ("b", None)])
    lines = text.splitlines()
    assert lines[0] == "NAME          N"
    assert lines[1] == "a             5"
    assert lines[2] == "long-name  1234"
    assert lines[3] == "b             -"


def test_events_table_shows_one_line_per_event():
    text = output.events_table([EVENT, {**EVENT, "version": 4, "position": 1043, "type": "OrderClosed"}])
    header, first, second = text.splitlines()
    assert header.split() == ["POSITION", "STREAM", "VERSION", "TYPE", "CREATED", "DATA"]
    assert first.split()[:4] == ["1042", "order-1", "3", "OrderShipped"]
    assert '{"sku":"A-1","qty":2}' in first
    assert second.split()[:4] == ["1043", "order-1", "4", "OrderClosed"]
    assert output.events_table([]) == "(no events)"


def test_stream_page_points_at_the_next_page():
    assert output.stream_page({"events": [EVENT], "next": 4}).endswith("more: --from 4")
    assert "more:" not in output.stream_page({"events": [EVENT], "next": None})
    assert "more:" not in output.stream_page({"events": [EVENT], "next": 4}, show_next=False)


def test_append_lines():
    assert output.append_result({"stream": "s", "fromVersion": 1, "version": 1, "position": 9}) == \
        "appended to s: version 1, position 9"
    assert output.append_result({"stream": "s", "fromVersion": 2, "version": 4, "position": 9}) == \
        "appended to s: versions 2..4, position 9"
    assert output.append_summary("s", 2500, 3, {"version": 2500, "position": 2600}) == \
        "appended 2500 events to s in 3 requests: stream version 2500, position 2600"
    assert output.append_summary("s", 0, 0, None) == "nothing to append to s"


def test_streams_table_and_cursor():
    text = output.streams_table({"streams": [{"stream": "a", "version": 2, "updated": "t"}], "next": "a"})
    assert text.splitlines()[1].split() == ["a", "2", "t"]
    assert text.endswith("more: --after a")
    assert output.streams_table({"streams": [], "next": None}) == "(no streams)"


def test_stream_info_lines():
    text = output.stream_info({"stream": "s", "version": 3, "created": "c", "updated": "u", "deleted": "soft",
                               "metadata": {"maxCount": 2}})
    assert "deleted:  soft" in text
    assert 'metadata: {"maxCount":2}' in text


def test_node_info_includes_cluster_members():
    text = output.node_info(
        {"version": "0.1.0", "store": "default", "node": "n1", "features": ["streams", "all"]},
        {"role": "single", "leader": {"node": "n1", "url": "http://x"}, "epoch": 0, "committedPosition": 5,
         "isr": ["n1"], "members": [{"node": "n1", "url": "http://x", "role": "single", "position": 5,
                                     "inSync": True, "lag": 0}]})
    assert "features:           streams, all" in text
    assert "committed position: 5" in text
    assert text.splitlines()[-1].split() == ["n1", "single", "http://x", "5", "0", "yes"]


def test_verify_result_lines():
    assert output.verify_result({"checked": 10, "corrupt": []}) == "ok: 10 records checked, none corrupt"
    assert output.verify_result({"checked": 10, "corrupt": [3, 7]}) == \
        "CORRUPT: 2 of 10 records at positions 3, 7"
    many = output.verify_result({"checked": 100, "corrupt": list(range(1, 31))})
    assert many.endswith("(+10 more)")
    damaged = output.verify_result({"checked": 4, "corrupt": [], "error": "database file damaged: x"})
    assert damaged.startswith("CORRUPT: database file damaged: x")


def test_error_line():
    err = errors.error_from_reply(409, {"error": "wrong_expected_version", "message": "stream is at 2"})
    assert output.error_line(err) == "error: wrong_expected_version: stream is at 2"
    refused = output.error_line(errors.ConnectionFailed("http://127.0.0.1:1", "refused"))
    assert refused.startswith("error: cannot connect to http://127.0.0.1:1") and "make run" in refused


# -- events files -------------------------------------------------------------------------------

def test_read_events_skips_blank_lines_and_keeps_fields():
    lines = ['{"type": "A", "data": {"x": 1}}\n', "\n", '{"type": "B", "data": null, "metadata": {"m": 1}, '
             '"id": "i"}\n']
    assert list(read_events(lines)) == [{"type": "A", "data": {"x": 1}},
                                        {"type": "B", "data": None, "metadata": {"m": 1}, "id": "i"}]


@pytest.mark.parametrize("line,reason", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"data": 1}', '"type"'),
    ('{"type": "A", "extra": 1}', "unknown keys"),
    ('{"type": "A", "metadata": [1]}', '"metadata"'),
    ('{"type": "A", "id": 5}', '"id"'),
])
def test_read_events_names_the_bad_line(line, reason):
    with pytest.raises(EventsFileError) as info:
        list(read_events(['{"type": "ok", "data": 1}', "", line]))
    assert info.value.line_number == 3
    assert reason in str(info.value) and str(info.value).startswith("line 3:")


def test_batched():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []
    with pytest.raises(ValueError):
        list(batched([1], 0))


# -- usage errors (exit 2) and no connection (exit 3) -------------------------------------------

UNREACHABLE = "http://127.0.0.1:1"


@pytest.mark.parametrize("args,message", [
    (["append", "s"], "--type"),
    (["append", "s", "--type", "T", "--data", "{bad"], "not valid JSON"),
    (["append", "s", "--type", "T", "--metadata", "[1]"], "JSON object"),
    (["append", "s", "--type", "T", "--file", "-"], "not both"),
    (["append", "s", "--type", "T", "--expected-version", "maybe"], "expected version"),
    (["read", "s", "--type", "A"], "'$all' only"),
    (["read", "s", "--limit", "0"], "--limit"),
    (["append", "s", "--type", "T", "--data", ""], "not valid JSON"),  # not stored as {}
    (["append", "s", "--type", "T", "--data", "NaN"], "NaN"),  # orjson would have sent null
    (["append", "s", "--type", "T", "--metadata", "null"], "JSON object"),  # not dropped
    (["snapshot", "put", "s", "--version", "1", "--type", "S", "--metadata", "null"], "JSON object"),
    (["--url", "notaurl", "info"], "not a node URL"),
    (["--url", "ftp://host/", "info"], "not a node URL"),
    (["--url", "http://127.0.0.1:99999", "info"], "not a node URL"),
])
def test_usage_errors_exit_2_without_contacting_a_node(args, message):
    result = CliRunner().invoke(cli, ["--url", UNREACHABLE, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_bad_events_file_exits_2_before_sending(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "A", "data": 1}\n{"type": 5}\n')
    result = CliRunner().invoke(cli, ["--url", UNREACHABLE, "append", "s", "--file", str(path)])
    assert result.exit_code == 2, result.output
    assert "line 2" in result.output
    assert "cannot connect" not in result.output, "the file is checked before any request"


def test_check_with_no_node_exits_3_at_once():
    result = CliRunner().invoke(cli, ["--url", UNREACHABLE, "check", "--converge-timeout", "600"])
    assert result.exit_code == 3 and "cannot connect" in result.output, result.output


def test_no_node_exits_3_with_a_hint():
    result = CliRunner().invoke(cli, ["--url", UNREACHABLE, "streams"])
    assert result.exit_code == 3
    assert "cannot connect" in result.output and "make run" in result.output


def test_url_comes_from_the_environment():
    result = CliRunner().invoke(cli, ["info"], env={"EVSTORE_URL": UNREACHABLE})
    assert result.exit_code == 3
    assert UNREACHABLE in result.output
