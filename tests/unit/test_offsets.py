"""OffsetTracker: only the contiguous answered prefix of a partition is committable."""

from aiokafka import TopicPartition

from inference_allocator.streams.offsets import OffsetTracker

TP = TopicPartition("x.requests.low", 0)
OTHER = TopicPartition("x.requests.low", 1)


def test_in_order_completion_advances_one_by_one():
    t = OffsetTracker()
    for offset in range(3):
        t.track(TP, offset)
    assert t.committable() == {}
    assert t.complete(TP, 0)
    assert t.committable() == {TP: 1}


def test_out_of_order_completion_waits_for_the_gap():
    t = OffsetTracker()
    for offset in (10, 11, 12):
        t.track(TP, offset)
    assert not t.complete(TP, 12)
    assert not t.complete(TP, 11)
    assert t.committable() == {}
    assert t.complete(TP, 10)
    assert t.committable() == {TP: 13}
    assert t.in_progress(TP) == 0


def test_committed_positions_are_not_offered_again():
    t = OffsetTracker()
    t.track(TP, 0)
    t.track(OTHER, 5)
    t.complete(TP, 0)
    t.committed(t.committable())
    assert t.committable() == {}
    t.complete(OTHER, 5)
    assert t.committable() == {OTHER: 6}


def test_forgotten_partitions_ignore_late_completions():
    t = OffsetTracker()
    t.track(TP, 0)
    t.forget([TP])
    assert not t.complete(TP, 0)
    assert t.committable() == {}
