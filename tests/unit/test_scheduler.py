"""The Scheduler (which waiting request a free slot takes) and the dispatch policies: pure
logic over a fleet of mock pools and a slot table, no broker and no I/O."""

from collections import Counter

import pytest
from aiokafka import TopicPartition

from inference_allocator.config import Settings
from inference_allocator.errors import ConfigurationError
from inference_allocator.fleet.pools import Fleet
from inference_allocator.fleet.spec import FleetSpec, PoolSpec
from inference_allocator.schemas import Priority, RequestRecord
from inference_allocator.streams.policies import DispatchPolicy, WeightedPolicy, make_policy
from inference_allocator.streams.scheduler import Running, Scheduler
from inference_allocator.streams.slots import SlotTable
from inference_allocator.streams.waiting import Pending

HIGH, MEDIUM, LOW = Priority.HIGH, Priority.MEDIUM, Priority.LOW


def fleet(*pools: tuple[str, list[str], int], load_ms: float = 0.0) -> Fleet:
    """Mock pools (name, models, slots); with ``load_ms``, their slots load models."""
    specs = [
        PoolSpec(name=name, backend="mock", models=models, slots=slots, model_load_ms=load_ms)
        for name, models, slots in pools
    ]
    return Fleet.from_spec(FleetSpec(pools=specs))


def scheduler(
    policy: DispatchPolicy | None = None,
    *,
    pools: Fleet | None = None,
    window: int = 0,
    **kwargs,
) -> Scheduler:
    pools = pools or fleet(("any", ["*"], 2))
    slots = SlotTable("w", pools.total_slots, 10_000)
    return Scheduler(pools, slots, policy=policy, affinity_window=window, **kwargs)


def pending(
    priority: Priority, name: str, timestamp: int, partition: int = 0, model: str = "m"
) -> Pending:
    tp = TopicPartition(f"x.requests.{priority.value}", partition)
    request = RequestRecord(request_id=name, model_id=model, prompt="p", priority=priority)
    return Pending(priority, tp, timestamp, timestamp, request, name)


def push(s: Scheduler, *items: Pending) -> None:
    for item in items:
        s.waiting.push(item)


def drain(s: Scheduler) -> list[str]:
    order = []
    while (item := s.pick()) is not None:
        order.append(item.request_id)
    return order


def test_higher_levels_go_first_whatever_the_arrival_order():
    s = scheduler()
    push(s, pending(LOW, "low1", 1), pending(MEDIUM, "med1", 2), pending(LOW, "low2", 3))
    push(s, pending(HIGH, "high1", 4), pending(MEDIUM, "med2", 5))
    assert drain(s) == ["high1", "med1", "med2", "low1", "low2"]


def test_a_later_high_overtakes_every_waiting_low():
    s = scheduler()
    push(s, *(pending(LOW, f"low{i}", i) for i in range(5)))
    assert s.pick().request_id == "low0"
    push(s, pending(HIGH, "high", 100))
    assert s.pick().request_id == "high"
    assert drain(s) == ["low1", "low2", "low3", "low4"]


def test_fifo_within_a_level_merges_partitions_by_timestamp():
    s = scheduler()
    push(
        s,
        pending(MEDIUM, "p0-t10", 10, partition=0),
        pending(MEDIUM, "p0-t30", 30, partition=0),
        pending(MEDIUM, "p1-t20", 20, partition=1),
        pending(MEDIUM, "p2-t05", 5, partition=2),
    )
    assert drain(s) == ["p2-t05", "p0-t10", "p1-t20", "p0-t30"]


def test_equal_timestamps_keep_arrival_order():
    s = scheduler()
    push(s, pending(LOW, "a", 7, partition=1), pending(LOW, "b", 7, partition=0))
    assert drain(s) == ["a", "b"]


def test_depth_and_len_follow_pushes_picks_and_drops():
    s = scheduler()
    waiting = s.waiting
    push(s, pending(HIGH, "h", 1), pending(LOW, "l0", 2), pending(LOW, "l1", 3, partition=1))
    assert (len(waiting), waiting.depth(HIGH), waiting.depth(LOW)) == (3, 1, 2)
    dropped = waiting.drop_partitions([TopicPartition("x.requests.low", 1)])
    assert dropped == 1 and waiting.depth(LOW) == 1
    assert drain(s) == ["h", "l0"]
    assert len(waiting) == 0 and s.pick() is None


def test_the_waiting_requests_know_which_ids_wait():
    s = scheduler()
    push(s, pending(HIGH, "a", 0), pending(HIGH, "a", 1))
    assert s.waiting.holds("a")
    assert s.pick() is not None and s.waiting.holds("a")
    assert s.waiting.remove("a") is not None and not s.waiting.holds("a")
    assert s.waiting.remove("a") is None


def test_weighted_policy_shares_6_3_1_and_low_never_starves():
    s = scheduler(WeightedPolicy())
    for i in range(100):
        push(s, *(pending(level, f"{level.value}{i}", i) for level in (HIGH, MEDIUM, LOW)))
    first_ten = [s.pick().priority for _ in range(10)]
    assert Counter(first_ten) == {HIGH: 6, MEDIUM: 3, LOW: 1}
    # Interleaved, not in bursts: no level waits more than its share of a round.
    assert first_ten[:2] != [LOW, LOW]


def test_weighted_policy_gives_everything_to_the_only_waiting_level():
    s = scheduler(WeightedPolicy())
    push(s, *(pending(LOW, f"low{i}", i) for i in range(5)))
    assert drain(s) == [f"low{i}" for i in range(5)]


def test_weighted_shares_come_from_the_setting():
    s = scheduler(make_policy("weighted", Settings(weighted_shares="1:1:2").shares()))
    for i in range(40):
        push(s, *(pending(level, f"{level.value}{i}", i) for level in (HIGH, MEDIUM, LOW)))
    first = [s.pick().priority for _ in range(40)]
    assert Counter(first) == {LOW: 20, HIGH: 10, MEDIUM: 10}


def test_make_policy_rejects_unknown_names():
    assert make_policy("strict").name == "strict"
    assert make_policy("weighted").name == "weighted"
    with pytest.raises(ConfigurationError, match="unknown scheduling policy"):
        make_policy("fair")


def test_a_slot_takes_the_most_urgent_request_its_pool_serves():
    s = scheduler()
    push(
        s,
        pending(HIGH, "high-a-1", 1, model="a"),
        pending(LOW, "low-b-2", 2, model="b"),
        pending(MEDIUM, "medium-b-3", 3, model="b"),
        pending(MEDIUM, "medium-b-4", 4, model="b"),
    )
    serves_b = {"b"}.__contains__
    # A "b" slot never sees the high "a": the most urgent it can run is the older medium.
    assert s.pick(serves_b).request_id == "medium-b-3"
    assert s.pick(serves_b).request_id == "medium-b-4"
    assert s.pick(serves_b).request_id == "low-b-2"
    assert s.pick(serves_b) is None
    assert s.pick({"a"}.__contains__).request_id == "high-a-1"
    assert len(s.waiting) == 0


def test_a_request_past_its_levels_wait_bound_goes_first():
    clock = [10_000]
    s = scheduler(max_wait_ms={LOW: 5_000, MEDIUM: 8_000}, clock=lambda: clock[0])
    push(s, pending(LOW, "low-old", 4_000))  # waited 6 s: past its 5 s bound
    push(s, pending(LOW, "low-new", 9_000))
    push(s, pending(MEDIUM, "med", 3_000))  # waited 7 s: within its 8 s bound
    push(s, *(pending(HIGH, f"high{i}", 9_500 + i) for i in range(3)))
    assert s.pick().request_id == "low-old"  # promoted past every high
    assert [s.pick().request_id for _ in range(3)] == ["high0", "high1", "high2"]
    clock[0] = 11_000  # the medium has now waited 8 s
    assert drain(s) == ["med", "low-new"]


def test_of_two_overdue_levels_the_longer_waiting_goes_first():
    s = scheduler(max_wait_ms={LOW: 1_000, MEDIUM: 1_000}, clock=lambda: 10_000)
    push(s, pending(MEDIUM, "med", 5_000), pending(LOW, "low", 2_000))
    assert drain(s) == ["low", "med"]


def test_ageing_holds_for_routed_picks_too():
    s = scheduler(max_wait_ms={LOW: 1_000}, clock=lambda: 10_000)
    push(s, pending(HIGH, "high", 9_900), pending(LOW, "low", 1_000))
    assert s.pick(lambda model: True).request_id == "low"


# --- the fast path and the routed path -------------------------------------------------


def test_one_pool_that_serves_every_model_takes_the_fast_path():
    s = scheduler()
    assert not s.routed
    push(s, pending(LOW, "low", 1), pending(HIGH, "high", 2))
    # A slot whose run ended takes the most urgent request at once.
    assert s.next_for(0).request_id == "high"
    assert s.next_for(1).request_id == "low"
    assert s.next_for(0) is None


def test_pools_of_different_models_take_the_routed_path():
    s = scheduler(pools=fleet(("a", ["a"], 1), ("b", ["b"], 2)))
    assert s.routed
    push(s, pending(HIGH, "high-a", 1, model="a"), pending(LOW, "low-b", 2, model="b"))
    assert s.next_for(0) is None  # on the routed path the dispatch loop matches
    # slot 0 (pool a) is the longest free: it takes the high "a"; then a "b" slot the low.
    gpu, first = s.match()
    assert (gpu, first.request_id) == (0, "high-a")
    s.slots.take(gpu)
    gpu, second = s.match()
    assert (gpu, second.request_id) == (1, "low-b")
    assert s.match() is None


def test_the_longest_free_slot_that_can_run_something_goes_first():
    s = scheduler(pools=fleet(("a", ["a"], 1), ("b", ["b"], 1)))
    push(s, pending(LOW, "b1", 1, model="b"))
    # slot 0 (pool a) is the longest free but can run nothing that waits: slot 1 takes it
    gpu, taken = s.match()
    assert (gpu, taken.request_id) == (1, "b1")


def test_a_down_pool_takes_nothing_until_it_is_back():
    s = scheduler(pools=fleet(("a", ["m"], 1), ("b", ["m"], 1)))
    s.fleet.pools[0].mark_down("no answer")
    push(s, pending(HIGH, "h", 1))
    gpu, taken = s.match()
    assert (gpu, taken.request_id) == (1, "h")
    s.slots.take(1)
    push(s, pending(HIGH, "h2", 2))
    assert s.match() is None  # only pool a's slot is free, and it is down
    s.fleet.pools[0].mark_up()
    gpu, taken = s.match()
    assert (gpu, taken.request_id) == (0, "h2")


def test_a_busy_pool_leaves_its_requests_waiting():
    s = scheduler(pools=fleet(("a", ["a"], 1), ("b", ["b"], 1)))
    s.slots.take(0)  # pool a's one slot runs something
    push(s, pending(HIGH, "a1", 1, model="a"))
    assert s.match() is None and s.waiting.holds("a1")


def test_a_pool_whose_server_is_checked_takes_the_routed_path():
    spec = PoolSpec(
        name="srv", backend="openai", models=["m"], slots=1, base_url="http://127.0.0.1:9/v1"
    )
    pools = Fleet.from_spec(FleetSpec(pools=[spec]))
    assert pools.pools[0].can_go_down
    assert scheduler(pools=pools).routed


# --- warm affinity ---------------------------------------------------------------------


def _push_models(s: Scheduler, models: str, level=LOW) -> None:
    for i, model in enumerate(models):
        s.waiting.push(pending(level, f"{model}{i}", i, model=model))


def test_a_warm_slot_takes_the_oldest_request_for_its_model():
    s = scheduler()
    _push_models(s, "ab")
    # slot 7 has "b" loaded, slot 3 has "a": the oldest ("a0") goes to the warm slot 3
    gpu, taken = s.pick_warm(None, [(7, "b"), (3, "a")])
    assert (gpu, taken.request_id) == (3, "a0")


def test_the_window_lets_a_warm_request_pass_the_oldest_cold_one_a_bounded_number_of_times():
    s = scheduler(window=2)
    _push_models(s, "baaaaa")
    order = [s.pick_warm(None, [(0, "a")])[1].request_id for _ in range(6)]
    # b0 is passed over twice (the window), then runs cold
    assert order == ["a1", "a2", "b0", "a3", "a4", "a5"]


def test_no_window_means_strict_age_order_and_never_across_levels():
    s = scheduler(window=4)
    _push_models(s, "ba")
    _push_models(s, "b", level=HIGH)
    _, taken = s.pick_warm(None, [(0, "a")])
    assert taken.request_id == "b0" and taken.priority == HIGH  # high first, cold
    s.affinity_window = 0
    _, taken = s.pick_warm(None, [(0, "a")])
    assert taken.request_id == "b0" and taken.priority == LOW


def test_match_prefers_the_slot_that_has_the_model_loaded():
    s = scheduler(pools=fleet(("g", ["a", "b"], 2), load_ms=100.0))
    assert s.routed
    # slot 0 ran "a" last, slot 1 ran "b"; slot 0 is the longest free
    for gpu, model in ((0, "a"), (1, "b")):
        s.slots.take(gpu)
        s.slots.lease(gpu, f"r{gpu}", LOW, model)
        s.slots.release(gpu)
    push(s, pending(LOW, "wants-b", 1, model="b"))
    gpu, taken = s.match()
    assert (gpu, taken.request_id) == (1, "wants-b")


# --- preemption ------------------------------------------------------------------------


def _busy(s: Scheduler) -> None:
    """Every slot runs something (the scheduler sees no free slot)."""
    for gpu in list(s.slots.free_ids()):
        s.slots.take(gpu)


def test_preemption_is_off_without_a_bound():
    s = scheduler(clock=lambda: 10_000)
    _busy(s)
    push(s, pending(HIGH, "h", 0))
    assert s.preemption([Running(0, LOW, 0)]) is None
    assert s.preemption_due_in_ms([Running(0, LOW, 0)]) is None


def test_a_high_past_the_bound_takes_the_slot_of_the_low_that_started_last():
    clock = [10_000]
    s = scheduler(preempt_after_ms=1_000, clock=lambda: clock[0])
    _busy(s)
    push(s, pending(HIGH, "h", 9_500))
    runs = [Running(0, LOW, 1_000), Running(1, LOW, 5_000)]
    assert s.preemption(runs) is None  # it has waited 500 ms of its 1,000
    assert s.preemption_due_in_ms(runs) == 500
    assert s.preemption_due_in_ms([Running(0, HIGH, 1_000)]) is None  # nothing below it
    clock[0] = 10_500
    gpu, urgent = s.preemption(runs)
    assert (gpu, urgent.request_id) == (1, "h") and not s.waiting.holds("h")


def test_the_lowest_level_is_preempted_first():
    s = scheduler(preempt_after_ms=100, clock=lambda: 10_000)
    _busy(s)
    push(s, pending(HIGH, "h", 9_500))
    gpu, _ = s.preemption([Running(0, LOW, 1_000), Running(1, MEDIUM, 9_000)])
    assert gpu == 0


def test_a_run_that_started_after_the_request_began_to_wait_was_chosen_and_stays():
    s = scheduler(preempt_after_ms=100, clock=lambda: 10_000)
    _busy(s)
    push(s, pending(HIGH, "h", 5_000))
    # the low started while the high waited: a weighted share or an ageing bound chose it
    assert s.preemption([Running(0, LOW, 6_000)]) is None
    assert s.preemption([Running(0, LOW, 6_000), Running(1, LOW, 4_000)])[0] == 1
    # a preempted request waits again from its preemption on
    requeued = pending(MEDIUM, "m", 1_000)
    requeued.requeued_at_ms = 8_000
    s.waiting.remove("h")
    s.waiting.requeue(requeued)
    assert s.preemption([Running(0, LOW, 7_000)])[0] == 0


def test_nothing_as_urgent_or_more_is_preempted():
    s = scheduler(preempt_after_ms=100, clock=lambda: 10_000)
    _busy(s)
    push(s, pending(MEDIUM, "m", 9_000), pending(LOW, "l", 9_000))
    assert s.preemption([Running(0, MEDIUM, 1), Running(1, HIGH, 2)]) is None
    # a low waits for nothing lower: it never preempts
    assert s.preemption([Running(0, LOW, 1)]) is not None  # the medium does
    assert s.waiting.holds("l") and not s.waiting.holds("m")


def test_background_work_is_preempted_by_its_own_level_and_never_preempts():
    s = scheduler(preempt_after_ms=0, clock=lambda: 10_000)
    _busy(s)
    line = pending(LOW, "line", 9_000)
    line.request.background = True
    push(s, line)
    batch_runs = [Running(0, LOW, 1_000, background=True), Running(1, LOW, 2_000, True)]
    assert s.preemption(batch_runs) is None  # a line waits for a slot like any other
    assert s.preemption_due_in_ms(batch_runs) is None
    push(s, pending(LOW, "interactive", 9_500))
    assert s.preemption_due_in_ms(batch_runs) == 0
    gpu, taken = s.preemption([Running(0, LOW, 1_000), *batch_runs[1:]])
    assert (gpu, taken.request_id) == (1, "interactive")  # not the interactive low's run
    # below a level, background work goes before that level's other runs
    push(s, pending(HIGH, "h", 9_000))
    gpu, _ = s.preemption([Running(0, LOW, 3_000), Running(1, LOW, 1_000, background=True)])
    assert gpu == 1


def test_a_free_slot_that_can_run_it_means_no_preemption():
    s = scheduler(preempt_after_ms=100, clock=lambda: 10_000)
    s.slots.take(0)  # slot 1 is free
    push(s, pending(HIGH, "h", 5))
    assert s.preemption([Running(0, LOW, 1)]) is None


def test_only_runs_in_up_pools_that_serve_the_model_are_preempted():
    s = scheduler(
        pools=fleet(("a", ["a"], 1), ("b", ["b"], 1), ("b2", ["b"], 1)),
        preempt_after_ms=100,
        clock=lambda: 10_000,
    )
    _busy(s)
    push(s, pending(HIGH, "wants-b", 9_500, model="b"))
    runs = [Running(0, LOW, 9_000), Running(1, LOW, 1_000), Running(2, LOW, 2_000)]
    s.fleet.pools[2].mark_down("gone")
    gpu, urgent = s.preemption(runs)
    assert (gpu, urgent.request_id) == (1, "wants-b")  # not pool a's later low, not b2's


def test_a_free_slot_of_another_model_does_not_stop_a_preemption():
    s = scheduler(pools=fleet(("a", ["a"], 1), ("b", ["b"], 1)), preempt_after_ms=100,
                  clock=lambda: 10_000)  # fmt: skip
    s.slots.take(1)  # pool a's slot 0 is free, pool b's runs a low
    push(s, pending(HIGH, "wants-b", 1_000, model="b"))
    gpu, _ = s.preemption([Running(1, LOW, 5)])
    assert gpu == 1


def test_a_requeued_request_is_the_head_of_its_level_again():
    s = scheduler()
    push(s, pending(LOW, "newer", 50))
    s.waiting.requeue(pending(LOW, "preempted", 100))  # its record is even younger
    assert drain(s) == ["preempted", "newer"]
