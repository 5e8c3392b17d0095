"""The delivery state of a persistent subscription, driven step by step with a hand-moved clock: the
checkpoint (never ahead of an unsettled event: KurrentDB #1301), retries and parking, ack timeouts,
bufferSize, round robin, partitionBy stream, the consumer limit, and replays that never move the checkpoint
(KurrentDB #1890)."""
from __future__ import annotations

import pytest

from evstore.node.subscriptions.delivery import MAX_READAHEAD, DeliveryState, parse_delivery_id
from evstore.node.subscriptions.settings import SubscriptionSettings, TooManyConsumers


def make(checkpoint: int = 0, **options) -> DeliveryState:
    return DeliveryState(SubscriptionSettings(stream="s", **options), checkpoint=checkpoint)


def feed(state: DeliveryState, keys, stream: str = "s") -> None:
    for key in keys:
        state.add(key, stream if isinstance(stream, str) else stream(key), f"event-{key}")


def keys_of(deliveries) -> list[int]:
    return [int(d.event.split("-")[1]) for d in deliveries]


def test_the_checkpoint_never_passes_an_unacked_event():
    state = make(buffer_size=10)
    state.begin_fetch("c", now=0)
    feed(state, range(1, 6))
    got = {int(d.event.split("-")[1]): d.delivery_id for d in state.take("c", 10, now=0)}
    assert state.checkpoint == 0
    state.ack([got[2], got[3], got[5]])
    assert state.checkpoint == 0  # 1 is still out
    state.ack([got[1]])
    assert state.checkpoint == 3  # 4 is still out
    state.ack([got[4]])
    assert state.checkpoint == 5


def test_a_retrying_event_holds_the_checkpoint_until_it_is_acked():
    state = make(buffer_size=10, max_retries=5)
    state.begin_fetch("c", now=0)
    feed(state, [1, 2, 3])
    first = state.take("c", 10, now=0)
    state.nack([first[0].delivery_id], "retry")
    state.ack([d.delivery_id for d in first[1:]])
    assert state.checkpoint == 0
    again = state.take("c", 10, now=1)
    assert keys_of(again) == [1] and again[0].attempt == 2
    state.ack([again[0].delivery_id])
    assert state.checkpoint == 3


def test_positions_the_filter_skipped_count_as_settled():
    state = DeliveryState(SubscriptionSettings(filter=None, stream=None), checkpoint=10)
    state.scanned_to(20)
    assert state.checkpoint == 20
    state.add(25, "a", "event-25")
    state.scanned_to(30)
    assert state.checkpoint == 24  # up to the pending event
    state.begin_fetch("c", now=0)
    state.ack([d.delivery_id for d in state.take("c", 1, now=0)])
    assert state.checkpoint == 30


def test_a_start_past_missing_events_moves_on():
    """KurrentDB #3449: the events after the checkpoint were truncated; the next one found is the next key."""
    state = make(checkpoint=5)
    feed(state, [9, 10])
    assert state.checkpoint == 8


def test_ack_timeout_redelivers_and_max_retries_parks():
    state = make(buffer_size=10, ack_timeout=5, max_retries=1)
    state.begin_fetch("c", now=0)
    feed(state, [1])
    first = state.take("c", 10, now=0)
    assert state.next_deadline() == 5
    assert state.expire(4.9) == 0 and state.in_flight == 1
    assert state.expire(5) == 1
    second = state.take("c", 10, now=6)
    assert keys_of(second) == [1] and second[0].attempt == 2 and state.redeliveries == 1
    state.expire(11)  # the second failure is past maxRetries 1: parked, not delivered again
    assert state.take("c", 10, now=12) == []
    parking = state.take_parking()
    assert [p.key for p in parking] == [1] and parking[0].park_reason == "maxRetries"
    assert state.checkpoint == 0  # until the park is written
    state.park_failed(parking)
    parking = state.take_parking()
    state.parked_written(parking)
    assert state.checkpoint == 1 and state.parked == 1
    assert state.ack([first[0].delivery_id]) == ([], [first[0].delivery_id])  # settled already


def test_nack_park_and_skip_settle_and_only_the_current_delivery_counts():
    state = make(buffer_size=10, max_retries=3, ack_timeout=1)
    state.begin_fetch("c", now=0)
    feed(state, [1, 2, 3])
    d1, d2, d3 = state.take("c", 10, now=0)
    assert state.nack([d1.delivery_id], "skip") == ([d1.delivery_id], [])
    assert state.nack([d2.delivery_id], "park") == ([d2.delivery_id], [])
    assert state.checkpoint == 1  # 2 is being parked
    state.expire(2)  # 3 timed out: its old delivery id no longer takes a nack
    assert state.nack([d3.delivery_id], "park") == ([], [d3.delivery_id])
    # ...but a late ack of it still settles it (the consumer did process it)
    assert state.ack([d3.delivery_id]) == ([d3.delivery_id], [])
    state.parked_written(state.take_parking())
    assert state.checkpoint == 3 and state.skipped == 1 and state.parked == 1


def test_an_ack_counts_only_for_an_id_the_state_issued():
    state = make(buffer_size=1, max_retries=3)
    state.begin_fetch("c", now=0)
    feed(state, [1, 2])
    (d1,) = state.take("c", 10, now=0)
    key, serial = d1.delivery_id.split(":")
    never_issued = [f"2:{serial}", f"1:{int(serial) + 7}", f"r1:{serial}"]  # 2 not yet delivered; no such serial
    assert state.ack(never_issued) == ([], never_issued)
    assert state.nack(never_issued, "skip") == ([], never_issued)
    assert state.checkpoint == 0 and state.acked == 0
    state.nack([d1.delivery_id], "retry")
    (again,) = state.take("c", 10, now=0)
    assert state.ack([d1.delivery_id]) == ([d1.delivery_id], [])  # an earlier delivery of it was issued
    assert state.checkpoint == 1 and state.ack([again.delivery_id]) == ([], [again.delivery_id])


def test_no_consumer_holds_more_than_buffer_size():
    state = make(buffer_size=3, concurrency_limit=2)
    state.add_consumer("a", push=True, now=0)
    state.begin_fetch("b", now=0)
    feed(state, range(1, 11))
    pushed = state.dispatch(now=0)
    assert len(pushed["a"]) == 3
    assert len(state.take("b", 100, now=0)) == 3
    assert state.dispatch(now=0) == {} and state.take("b", 100, now=0) == []
    state.ack([pushed["a"][0].delivery_id])
    assert len(state.dispatch(now=0)["a"]) == 1


def test_push_consumers_take_turns():
    state = make(buffer_size=10, concurrency_limit=3)
    for name in "abc":
        state.add_consumer(name, push=True, now=0)
    feed(state, range(1, 7))
    pushed = state.dispatch(now=0)
    assert {name: keys_of(batch) for name, batch in pushed.items()} == {"a": [1, 4], "b": [2, 5], "c": [3, 6]}
    for key in (7, 8, 9, 10):  # one event at a time: the turn still goes round
        feed(state, [key])
        pushed = state.dispatch(now=0)
        assert list(pushed) == ["abc"[(key - 1) % 3]]


def test_partition_by_stream_sends_one_stream_to_one_consumer_in_order():
    state = make(buffer_size=10, concurrency_limit=2, partition_by="stream", max_retries=5)
    state.add_consumer("a", push=True, now=0)
    state.add_consumer("b", push=True, now=0)
    streams = {1: "x", 2: "y", 3: "x", 4: "x", 5: "y", 6: "z"}
    feed(state, streams, stream=streams.get)
    pushed = state.dispatch(now=0)
    owner = {}
    for name, batch in pushed.items():
        for key in keys_of(batch):
            assert owner.setdefault(streams[key], name) == name  # one consumer per stream
        for stream in set(streams.values()):
            mine = [k for k in keys_of(batch) if streams[k] == stream]
            assert mine == sorted(mine)
    assert sorted(k for batch in pushed.values() for k in keys_of(batch)) == [1, 2, 3, 4, 5, 6]
    # x's first event fails: x's later events go back too, and x restarts from it, in order
    holder = owner["x"]
    x1 = next(d for d in pushed[holder] if keys_of([d]) == [1])
    state.nack([x1.delivery_id], "retry")
    again = state.dispatch(now=1)
    x_again = [k for batch in again.values() for k in keys_of(batch) if streams[k] == "x"]
    assert x_again == [1, 3, 4]
    assert len([name for name, batch in again.items() if any(streams[k] == "x" for k in keys_of(batch))]) == 1


def test_partitioned_stream_is_free_again_once_acked():
    state = make(buffer_size=1, concurrency_limit=2, partition_by="stream")
    state.begin_fetch("a", now=0)
    state.begin_fetch("b", now=0)
    feed(state, [1, 2])  # both in stream s
    first = state.take("a", 1, now=0)
    assert state.take("b", 1, now=0) == []  # s belongs to a while a holds 1
    state.ack([first[0].delivery_id])
    assert keys_of(state.take("b", 1, now=0)) == [2]


def test_concurrency_limit_counts_http_consumers_only_while_they_fetch_or_hold_events():
    state = make(concurrency_limit=2)
    state.add_consumer("ws", push=True, now=0)
    state.begin_fetch("http", now=0)
    with pytest.raises(TooManyConsumers):
        state.add_consumer("third", push=True, now=1)
    state.end_fetch("http")  # it holds nothing and fetches no more: it does not count
    state.add_consumer("third", push=True, now=2)
    assert set(state.consumers) == {"ws", "third"}
    state.remove_consumer("third")
    feed(state, [1])
    state.begin_fetch("http", now=3)
    got = state.take("http", 1, now=3)
    state.end_fetch("http")
    assert "http" in state.consumers  # it holds an event
    state.ack([got[0].delivery_id])
    assert "http" not in state.consumers


def test_a_consumer_that_leaves_gives_its_events_to_the_others():
    state = make(buffer_size=10, concurrency_limit=2, max_retries=0)
    state.add_consumer("a", push=True, now=0)
    feed(state, [1, 2])
    assert keys_of(state.dispatch(now=0)["a"]) == [1, 2]
    state.add_consumer("b", push=True, now=0)
    state.remove_consumer("a")  # with maxRetries 0 a failure parks: a consumer leaving is one
    assert state.dispatch(now=0) == {}
    assert [p.key for p in state.take_parking()] == [1, 2]

    state = make(buffer_size=10, concurrency_limit=2, max_retries=3)
    state.add_consumer("a", push=True, now=0)
    feed(state, [1, 2])
    state.dispatch(now=0)
    state.add_consumer("b", push=True, now=0)
    state.remove_consumer("a")
    redelivered = state.dispatch(now=0)["b"]
    assert keys_of(redelivered) == [1, 2] and all(d.attempt == 2 for d in redelivered)


def test_replaying_parked_events_never_moves_the_checkpoint():
    """KurrentDB #1890: replayed events are delivered beside the main sequence."""
    state = make(checkpoint=100, buffer_size=10)
    state.begin_fetch("c", now=0)
    state.add_replay(1, "s", "event-7")
    state.add_replay(2, "s", "event-9")
    feed(state, [101])
    got = state.take("c", 10, now=0)
    assert [d.replayed for d in got] == [True, True, False]  # replays first
    assert state.checkpoint == 100
    state.ack([d.delivery_id for d in got if d.replayed])
    assert state.checkpoint == 100 and state.replays_left == 0
    state.ack([got[2].delivery_id])
    assert state.checkpoint == 101


def test_read_ahead_is_bounded():
    state = make(buffer_size=5, concurrency_limit=2)
    assert state.room == 10
    feed(state, range(1, 11))
    assert state.room == 0
    big = make(buffer_size=1000, concurrency_limit=100)
    assert big.room == MAX_READAHEAD


def test_delivery_ids_are_checked_whole():
    assert parse_delivery_id("12:34") == (False, 12, 34)
    assert parse_delivery_id("r3:4") == (True, 3, 4)
    for bad in ("12:34\n", "12", ":3", "x1:2", 12, None):
        assert parse_delivery_id(bad) is None
