"""The consistency checker's judgement on fabricated node data (no server)."""
from __future__ import annotations

import uuid

from evstore.client.harness.checker import Ev, History, NodeData, Problems, StreamView, analyse


class Log:
    """Builds a log the way a correct store would, and the history of the appends that made it."""

    def __init__(self) -> None:
        self.events: list[Ev] = []
        self.versions: dict[str, int] = {}
        self.history = History()

    def append(self, stream: str, count: int = 1, status: str = "ok", written: bool = True) -> list[str]:
        ids = [str(uuid.uuid4()) for _ in range(count)]
        version = self.versions.get(stream, 0)
        reply = None
        if written:
            for i, event_id in enumerate(ids):
                self.events.append(Ev(len(self.events) + 1, event_id, stream, version + i + 1, "Done",
                                      {"n": len(self.events)}, {}))
            self.versions[stream] = version + count
            reply = {"stream": stream, "fromVersion": version + 1, "version": version + count,
                     "position": len(self.events)}
        self.history.record(stream, ids, version, status, reply if status == "ok" else None)
        return ids


def node_data(url: str, events: list[Ev], listed: dict[str, int] | None = None) -> NodeData:
    """A node that read `events` as its $all, and each non-system stream consistently with it."""
    by_stream: dict[str, list[Ev]] = {}
    for e in events:
        by_stream.setdefault(e.stream, []).append(e)
    names = {s: len(evs) for s, evs in by_stream.items() if not s.startswith("$")}
    listed = names if listed is None else listed
    streams = {s: StreamView(len(by_stream.get(s, [])), list(by_stream.get(s, []))) for s in listed}
    head = events[-1].position if events else 0
    return NodeData(url, head, list(events), dict(listed), streams)


def good_log() -> Log:
    log = Log()
    log.append("order-1", 2)
    log.append("order-2", 1)
    log.append("order-1", 3)
    log.append("order-2", 2, status="unknown", written=True)
    log.append("order-3", 2, status="unknown", written=False)
    log.append("order-2", 1, status="failed", written=False)
    log.append("order-2", 1)
    return log


def three_nodes(log: Log) -> list[NodeData]:
    return [node_data(f"http://n{i}", log.events) for i in range(3)]


def problems_text(report) -> str:
    return "\n".join(report.problems)


def test_consistent_nodes_pass_with_counts():
    log = good_log()
    report = analyse(three_nodes(log), log.history)
    assert report.ok, report.summary()
    assert report.problems == [] and report.problems_total == 0
    assert (report.nodes, report.events, report.streams) == (3, 9, 2)
    assert (report.acknowledged, report.unknown_present, report.unknown_absent, report.failed) == (4, 1, 1, 1)
    assert report.summary().startswith("ok: 3 nodes, 9 events, 2 streams")


def test_structural_check_without_history_passes():
    report = analyse(three_nodes(good_log()))
    assert report.ok, report.summary()
    assert report.acknowledged == 0


def test_system_streams_do_not_need_a_history_entry():
    log = good_log()
    events = log.events + [Ev(len(log.events) + 1, str(uuid.uuid4()), "$$order-1", 1, "$metadata", {}, {})]
    report = analyse([node_data("http://n0", events)], log.history)
    assert report.ok, report.summary()


def test_a_lost_acknowledged_event_is_reported():
    log = good_log()
    lost = log.history.attempts[2].event_ids[1]
    # a store that lost it everywhere, renumbering the rest, so only the history can tell
    kept = [e for e in log.events if e.id != lost]
    renumbered, versions = [], {}
    for e in kept:
        versions[e.stream] = versions.get(e.stream, 0) + 1
        renumbered.append(e._replace(position=len(renumbered) + 1, version=versions[e.stream]))
    report = analyse([node_data(f"http://n{i}", renumbered) for i in range(3)], log.history)
    assert not report.ok
    assert "acknowledged append of 3 event(s) to 'order-1'" in problems_text(report)
    assert "lost: 1 of 3 events missing" in problems_text(report)


def test_a_duplicate_event_id_is_reported():
    log = good_log()
    first = log.events[0]
    events = log.events + [first._replace(position=len(log.events) + 1, version=6)]
    report = analyse([node_data("http://n0", events)], log.history)
    assert not report.ok
    assert f"event id {first.id} occurs more than once" in problems_text(report)


def test_a_position_gap_is_reported():
    log = good_log()
    events = [e for e in log.events if e.position != 4]
    report = analyse([node_data("http://n0", events)])
    assert not report.ok
    assert "http://n0: $all has a gap: position 4 missing" in report.problems


def test_a_stream_version_gap_is_reported():
    log = good_log()
    events = [e._replace(version=e.version + 1) if e.stream == "order-3" or e.position == 3 else e
              for e in log.events]
    report = analyse([node_data("http://n0", events)])
    assert "stream 'order-2' in $all has version 2 at position 3 where version 1 belongs" in problems_text(report)


def test_divergence_between_nodes_is_reported():
    log = good_log()
    other = list(log.events)
    other[5] = other[5]._replace(data={"changed": True})
    report = analyse([node_data("http://n0", log.events), node_data("http://n1", other)], log.history)
    assert not report.ok
    assert "nodes diverge at position 6" in problems_text(report)


def test_a_node_that_lags_is_reported():
    log = good_log()
    report = analyse([node_data("http://n0", log.events), node_data("http://n1", log.events[:-2])])
    assert not report.ok
    text = problems_text(report)
    assert "$all head is 9 on http://n0 but 7 on http://n1" in text
    assert "http://n1 lacks 2 events that http://n0 has, from position 8" in text


def test_a_half_visible_unknown_append_is_reported():
    log = good_log()
    half = log.history.record("order-9", [str(uuid.uuid4()), str(uuid.uuid4())], 0)
    events = log.events + [Ev(len(log.events) + 1, half.event_ids[0], "order-9", 1, "Done", {}, {})]
    report = analyse([node_data("http://n0", events)], log.history)
    assert not report.ok
    assert "with unknown outcome is half-visible: 1 of 2 events present" in problems_text(report)


def test_a_visible_failed_append_is_reported():
    log = good_log()
    ids = log.append("order-5", 1, status="failed", written=True)
    report = analyse(three_nodes(log), log.history)
    assert not report.ok
    assert f"failed append of 1 event(s) to 'order-5' (id {ids[0]}) is visible" in problems_text(report)


def test_an_acknowledged_append_elsewhere_than_its_reply_is_reported():
    log = good_log()
    log.history.attempts[0].reply = dict(log.history.attempts[0].reply, position=7)
    report = analyse([node_data("http://n0", log.events)], log.history)
    assert "but was acknowledged as versions 1..2, position 7" in problems_text(report)


def test_an_event_nobody_appended_is_reported():
    log = good_log()
    stranger = Ev(len(log.events) + 1, str(uuid.uuid4()), "order-1", 6, "Done", {}, {})
    report = analyse([node_data("http://n0", log.events + [stranger])], log.history)
    assert f"order-1@6 id {stranger.id} type Done at position 10 was never appended" in problems_text(report)


def test_a_stream_read_that_disagrees_with_all_is_reported():
    log = good_log()
    node = node_data("http://n0", log.events)
    view = node.streams["order-1"]
    node.streams["order-1"] = StreamView(view.version, view.events[:-1])
    report = analyse([node])
    assert "stream 'order-1' read differs from its events in $all in length: 4 vs 5 events" in problems_text(report)


def test_an_unreadable_node_fails_the_check():
    log = good_log()
    nodes = [node_data("http://n0", log.events), NodeData("http://n1", error="ConnectionFailed: refused")]
    report = analyse(nodes)
    assert not report.ok
    assert report.problems == ["http://n1: could not be read: ConnectionFailed: refused"]
    assert report.heads == {"http://n0": 9, "http://n1": None}


def test_problems_are_capped_per_kind_and_counted():
    log = Log()
    for i in range(30):
        log.append(f"s-{i}")
    gappy = [e._replace(position=e.position * 2) for e in log.events]
    report = analyse([node_data("http://n0", gappy)], problems=Problems(per_kind=5))
    gaps = [p for p in report.problems if "gap" in p]
    assert len(gaps) == 5
    assert report.problems_total > 5
    assert report.problems[-1] == f"... and {report.problems_total - len(report.problems) + 1} more problems"


def test_an_append_to_several_streams_is_judged_whole():
    log = good_log()
    first, second = log.append("multi-a", 2), log.append("multi-b", 1)
    whole = History()
    for attempt in log.history:
        if attempt.event_ids not in (first, second):
            whole.attempts.append(attempt)
    whole.record_many([("multi-a", first, 0), ("multi-b", second, 0)])
    assert analyse(three_nodes(log), whole).ok
    torn = History()
    torn.attempts = [a for a in whole.attempts]
    torn.groups = [[whole.groups[0][0], torn.record("multi-c", [str(uuid.uuid4())], 0)]]
    for attempt in torn.groups[0]:
        attempt.status = "unknown"
    report = analyse(three_nodes(log), torn)
    assert not report.ok and "is torn: 2 of 3 events present" in problems_text(report)

# -- answers that must tell the truth (issue 11, points 1-3) ------------------------------------------

def timed_log() -> Log:
    """order-1 at versions 1..3, acknowledged at t=1, 2, 3 (each sent 0.5 s before)."""
    log = Log()
    for t in (1.0, 2.0, 3.0):
        log.append("order-1")
        attempt = log.history.attempts[-1]
        attempt.started, attempt.answered = t - 0.5, t
    return log


def refused(log: Log, expected: int, current: int, started: float, answered: float) -> None:
    attempt = log.history.record("order-1", [str(uuid.uuid4())], expected)
    attempt.rejected({"status": 409, "error": "wrong_expected_version", "currentVersion": current})
    attempt.started, attempt.answered = started, answered


def kinds(log: Log) -> str:
    return problems_text(analyse(three_nodes(log), log.history))


def test_a_truthful_409_and_truthful_reads_pass():
    log = timed_log()
    refused(log, expected=1, current=2, started=2.2, answered=2.3)  # version 2 was there, 3 not yet sent
    read = log.history.record_read("c1", "http://n0", "order-1", consistency="leader")
    read.started, read.answered, read.version = 3.1, 3.2, 3
    later = log.history.record_read("c1", "http://n0", "order-1")
    later.started, later.answered, later.version = 3.3, 3.4, 3
    report = analyse(three_nodes(log), log.history)
    assert report.ok, report.summary()


def test_a_409_naming_a_version_never_committed_is_caught():
    log = timed_log()
    refused(log, expected=3, current=4, started=3.5, answered=3.6)
    assert "never committed" in kinds(log)


def test_a_409_naming_the_expected_version_or_one_written_later_is_caught():
    log = timed_log()
    refused(log, expected=2, current=2, started=2.2, answered=2.3)
    refused(log, expected=1, current=3, started=1.2, answered=1.3)  # version 3 was sent at 2.5
    text = kinds(log)
    assert "the version it expected" in text and "written by an append sent" in text


def test_a_409_older_than_an_acknowledged_version_is_caught():
    log = timed_log()
    refused(log, expected=1, current=2, started=3.5, answered=3.6)  # version 3 was acknowledged at 3
    assert "was acknowledged before it was sent" in kinds(log)


def test_a_leader_read_missing_an_acknowledged_append_is_caught():
    log = timed_log()
    read = log.history.record_read("c1", "http://n1", "order-1", consistency="leader")
    read.started, read.answered, read.version = 2.5, 2.6, 1  # version 2 was acknowledged at 2
    assert "consistency=leader read" in kinds(log)


def test_reads_going_backwards_on_one_node_are_caught():
    log = timed_log()
    first = log.history.record_read("c1", "http://n1", "order-1")
    first.started, first.answered, first.version = 3.1, 3.2, 3
    second = log.history.record_read("c1", "http://n1", "order-1")
    second.started, second.answered, second.version = 3.3, 3.4, 2
    other_node = log.history.record_read("c1", "http://n2", "order-1")  # another node may lag: not a problem
    other_node.started, other_node.answered, other_node.version = 3.5, 3.6, 1
    # nor may a node's own read after a leader read it forwarded (the leader's answer, not this node's log)
    forwarded = log.history.record_read("c1", "http://n2", "order-1", consistency="leader")
    forwarded.started, forwarded.answered, forwarded.version = 3.7, 3.8, 3
    own = log.history.record_read("c1", "http://n2", "order-1")
    own.started, own.answered, own.version = 3.9, 4.0, 1
    text = kinds(log)
    assert "read 'order-1' through http://n1 at version 3, then at 2" in text and "http://n2" not in text


def test_system_events_trimmed_a_moment_apart_on_each_node_are_no_gap_or_divergence():
    """Nodes trim `$`-streams with a maxCount (subscription checkpoints) on their own: `evstore check` said a
    healthy cluster had hundreds of gaps and diverged."""
    log = Log()
    log.append("order-1", 2)
    log.append("$sub-a-checkpoint", 5)
    log.append("order-1", 1)
    log.append("$sub-a-checkpoint", 3)
    checkpoints = [e for e in log.events if e.stream.startswith("$")]
    trimmed_to_3 = [e for e in log.events if e not in checkpoints[:2]]  # versions 1-2 gone
    trimmed_to_5 = [e for e in log.events if e not in checkpoints[:4]]  # versions 1-4 gone, a moment later
    nodes = [node_data("http://n0", trimmed_to_3), node_data("http://n1", trimmed_to_5),
             node_data("http://n2", trimmed_to_3)]
    report = analyse(nodes)  # as `evstore check` runs: no workload history
    assert report.ok, problems_text(report)
    # a user event missing besides is still a gap
    lost = [e for e in trimmed_to_5 if not (e.stream == "order-1" and e.version == 3)]
    report = analyse([node_data("http://n0", lost)])
    assert not report.ok and "gap" in problems_text(report)
