"""PriorityDispatcher and the dispatch policies: pure logic, no broker."""

from collections import Counter

import pytest
from aiokafka import TopicPartition

from inference_allocator.errors import ConfigurationError
from inference_allocator.schemas import Priority, RequestRecord
from inference_allocator.streams.dispatcher import Pending, PriorityDispatcher
from inference_allocator.streams.policies import WeightedPolicy, make_policy

HIGH, MEDIUM, LOW = Priority.HIGH, Priority.MEDIUM, Priority.LOW


def pending(priority: Priority, name: str, timestamp: int, partition: int = 0) -> Pending:
    tp = TopicPartition(f"x.requests.{priority.value}", partition)
    request = RequestRecord(request_id=name, model_id="m", prompt="p", priority=priority)
    return Pending(priority, tp, timestamp, timestamp, request, name)


def drain(dispatcher: PriorityDispatcher) -> list[str]:
    order = []
    while (item := dispatcher.pop()) is not None:
        order.append(item.request_id)
    return order


def test_higher_levels_go_first_whatever_the_arrival_order():
    d = PriorityDispatcher()
    d.push(pending(LOW, "low1", 1))
    d.push(pending(MEDIUM, "med1", 2))
    d.push(pending(LOW, "low2", 3))
    d.push(pending(HIGH, "high1", 4))
    d.push(pending(MEDIUM, "med2", 5))
    assert drain(d) == ["high1", "med1", "med2", "low1", "low2"]


def test_a_later_high_overtakes_every_waiting_low():
    d = PriorityDispatcher()
    for i in range(5):
        d.push(pending(LOW, f"low{i}", i))
    assert d.pop().request_id == "low0"
    d.push(pending(HIGH, "high", 100))
    assert d.pop().request_id == "high"
    assert drain(d) == ["low1", "low2", "low3", "low4"]


def test_fifo_within_a_level_merges_partitions_by_timestamp():
    d = PriorityDispatcher()
    d.push(pending(MEDIUM, "p0-t10", 10, partition=0))
    d.push(pending(MEDIUM, "p0-t30", 30, partition=0))
    d.push(pending(MEDIUM, "p1-t20", 20, partition=1))
    d.push(pending(MEDIUM, "p2-t05", 5, partition=2))
    assert drain(d) == ["p2-t05", "p0-t10", "p1-t20", "p0-t30"]


def test_equal_timestamps_keep_arrival_order():
    d = PriorityDispatcher()
    d.push(pending(LOW, "a", 7, partition=1))
    d.push(pending(LOW, "b", 7, partition=0))
    assert drain(d) == ["a", "b"]


def test_depth_and_len_follow_pushes_pops_and_drops():
    d = PriorityDispatcher()
    d.push(pending(HIGH, "h", 1, partition=0))
    d.push(pending(LOW, "l0", 2, partition=0))
    d.push(pending(LOW, "l1", 3, partition=1))
    assert (len(d), d.depth(HIGH), d.depth(LOW)) == (3, 1, 2)
    dropped = d.drop_partitions([TopicPartition("x.requests.low", 1)])
    assert dropped == 1 and d.depth(LOW) == 1
    assert drain(d) == ["h", "l0"]
    assert len(d) == 0 and d.pop() is None


def test_weighted_policy_shares_6_3_1_and_low_never_starves():
    d = PriorityDispatcher(WeightedPolicy())
    for i in range(100):
        for level in (HIGH, MEDIUM, LOW):
            d.push(pending(level, f"{level.value}{i}", i))
    first_ten = [d.pop().priority for _ in range(10)]
    assert Counter(first_ten) == {HIGH: 6, MEDIUM: 3, LOW: 1}
    # Interleaved, not in bursts: no level waits more than its share of a round.
    assert first_ten[:2] != [LOW, LOW]


def test_weighted_policy_gives_everything_to_the_only_waiting_level():
    d = PriorityDispatcher(WeightedPolicy())
    for i in range(5):
        d.push(pending(LOW, f"low{i}", i))
    assert drain(d) == [f"low{i}" for i in range(5)]


def test_make_policy_rejects_unknown_names():
    assert make_policy("strict").name == "strict"
    assert make_policy("weighted").name == "weighted"
    with pytest.raises(ConfigurationError, match="unknown scheduling policy"):
        make_policy("fair")


def test_a_slot_takes_the_most_urgent_request_its_pool_serves():
    dispatcher = PriorityDispatcher()

    def push(level: Priority, model: str, ts: int) -> None:
        tp = TopicPartition(f"t.{level.value}", 0)
        request = RequestRecord(
            request_id=f"{level.value}-{model}-{ts}", model_id=model, prompt="p"
        )
        dispatcher.push(Pending(level, tp, ts, ts, request, request.request_id or ""))

    push(Priority.HIGH, "a", 1)
    push(Priority.LOW, "b", 2)
    push(Priority.MEDIUM, "b", 3)
    push(Priority.MEDIUM, "b", 4)
    serves_b = {"b"}.__contains__
    # A "b" slot never sees the high "a": the most urgent it can run is the older medium.
    assert dispatcher.pop(serves_b).request_id == "medium-b-3"
    assert dispatcher.pop(serves_b).request_id == "medium-b-4"
    assert dispatcher.pop(serves_b).request_id == "low-b-2"
    assert dispatcher.pop(serves_b) is None
    assert dispatcher.pop({"a"}.__contains__).request_id == "high-a-1"
    assert len(dispatcher) == 0


def _push_models(dispatcher: PriorityDispatcher, models: str, level=Priority.LOW) -> None:
    tp = TopicPartition(f"t.{level.value}", 0)
    for i, model in enumerate(models):
        request = RequestRecord(request_id=f"{model}{i}", model_id=model, prompt="p")
        dispatcher.push(Pending(level, tp, i, i, request, request.request_id or ""))


def test_a_warm_slot_takes_the_oldest_request_for_its_model():
    dispatcher = PriorityDispatcher()
    _push_models(dispatcher, "ab")
    # slot 7 has "b" loaded, slot 3 has "a": the oldest ("a0") goes to the warm slot 3
    gpu, pending = dispatcher.pop_warm(lambda m: True, [(7, "b"), (3, "a")], window=0)
    assert (gpu, pending.request_id) == (3, "a0")


def test_the_window_lets_a_warm_request_pass_the_oldest_cold_one_a_bounded_number_of_times():
    dispatcher = PriorityDispatcher()
    _push_models(dispatcher, "baaaaa")
    order = []
    for _ in range(6):
        gpu, pending = dispatcher.pop_warm(lambda m: True, [(0, "a")], window=2)
        order.append(pending.request_id)
    # b0 is passed over twice (the window), then runs cold
    assert order == ["a1", "a2", "b0", "a3", "a4", "a5"]


def test_no_window_means_strict_age_order_and_never_across_levels():
    dispatcher = PriorityDispatcher()
    _push_models(dispatcher, "ba")
    _push_models(dispatcher, "b", level=Priority.HIGH)
    gpu, pending = dispatcher.pop_warm(lambda m: True, [(0, "a")], window=4)
    assert pending.request_id == "b0" and pending.priority == Priority.HIGH  # high first, cold
    gpu, pending = dispatcher.pop_warm(lambda m: True, [(0, "a")], window=0)
    assert pending.request_id == "b0" and pending.priority == Priority.LOW


def test_a_request_past_its_levels_wait_bound_goes_first():
    clock = [10_000]
    d = PriorityDispatcher(max_wait_ms={LOW: 5_000, MEDIUM: 8_000}, clock=lambda: clock[0])
    d.push(pending(LOW, "low-old", 4_000))  # waited 6 s: past its 5 s bound
    d.push(pending(LOW, "low-new", 9_000))
    d.push(pending(MEDIUM, "med", 3_000))  # waited 7 s: within its 8 s bound
    for i in range(3):
        d.push(pending(HIGH, f"high{i}", 9_500 + i))
    assert d.pop().request_id == "low-old"  # promoted past every high
    assert [d.pop().request_id for _ in range(3)] == ["high0", "high1", "high2"]
    clock[0] = 11_000  # the medium has now waited 8 s
    assert drain(d) == ["med", "low-new"]


def test_of_two_overdue_levels_the_longer_waiting_goes_first():
    d = PriorityDispatcher(max_wait_ms={LOW: 1_000, MEDIUM: 1_000}, clock=lambda: 10_000)
    d.push(pending(MEDIUM, "med", 5_000))
    d.push(pending(LOW, "low", 2_000))
    assert drain(d) == ["low", "med"]


def test_ageing_holds_for_routed_pops_too():
    d = PriorityDispatcher(max_wait_ms={LOW: 1_000}, clock=lambda: 10_000)
    d.push(pending(HIGH, "high", 9_900))
    d.push(pending(LOW, "low", 1_000))
    assert d.pop(lambda model: True).request_id == "low"


def test_weighted_shares_come_from_the_setting():
    from inference_allocator.config import Settings

    policy = make_policy("weighted", Settings(weighted_shares="1:1:2").shares())
    d = PriorityDispatcher(policy)
    for i in range(40):
        for level in (HIGH, MEDIUM, LOW):
            d.push(pending(level, f"{level.value}{i}", i))
    first = [d.pop().priority for _ in range(40)]
    assert Counter(first) == {LOW: 20, HIGH: 10, MEDIUM: 10}
