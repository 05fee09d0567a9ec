"""Fair shares among tenants within a level (the Virtual Token Counter), and the scheduler
choosing by them: pure logic, no broker."""

from collections import Counter

from aiokafka import TopicPartition

from inference_allocator.fleet.pools import Fleet
from inference_allocator.fleet.spec import FleetSpec, PoolSpec
from inference_allocator.schemas import Priority, RequestRecord, ResponseRecord
from inference_allocator.streams.fair_share import DEFAULT_TENANT, FairShare
from inference_allocator.streams.scheduler import Scheduler
from inference_allocator.streams.slots import SlotTable
from inference_allocator.streams.waiting import Pending

HIGH, MEDIUM, LOW = Priority.HIGH, Priority.MEDIUM, Priority.LOW


def request(tenant: str | None, prompt: str = "x" * 40, name: str = "r") -> RequestRecord:
    return RequestRecord(request_id=name, model_id="m", prompt=prompt, tenant=tenant)


def answer(name: str, tenant: str | None, prompt: int, completion: int, level=MEDIUM):
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return ResponseRecord(request_id=name, status="ok", tenant=tenant, priority=level, usage=usage)


def test_input_and_output_tokens_are_counted_by_their_weights_and_the_tenants():
    fair = FairShare({"big": 2.0}, output_weight=2.0)
    fair.answered(answer("1", "small", prompt=10, completion=5))
    fair.answered(answer("2", "big", prompt=10, completion=5))
    assert fair.counter(MEDIUM, "small") == 20  # 10 + 2 x 5
    assert fair.counter(MEDIUM, "big") == 10  # the same, over its weight of 2
    assert fair.counter(HIGH, "small") == 0  # per level


def test_idle_tenants_a_lift_would_raise_anyway_are_forgotten():
    fair = FairShare()
    for name, tokens in (("busy", 1000), ("gone-low", 10), ("gone-high", 5000), ("runs", 5)):
        fair.answered(answer(name, name, prompt=tokens, completion=0))
    fair.started("r", MEDIUM, request("runs"))
    forgotten = fair.forget_idle(MEDIUM, ["busy"])
    assert forgotten == ["gone-low"]  # below busy's counter; not running, not waiting
    assert set(fair.tenants(MEDIUM)) == {"busy", "gone-high", "runs"}
    assert fair.forget_idle(HIGH, []) == []  # nothing known at that level


def test_a_running_request_is_charged_its_prompt_until_its_answer_says():
    fair = FairShare()
    fair.started("r1", MEDIUM, request("a", prompt="x" * 400))
    assert fair.counter(MEDIUM, "a") == 100  # 4 characters a token
    fair.ran("r1", {"prompt_tokens": 90, "completion_tokens": 10}, ok=True)
    assert fair.counter(MEDIUM, "a") == 110  # the estimate replaced
    fair.started("r2", MEDIUM, request("a", prompt="x" * 400))
    fair.dropped("r2")  # preempted: charged again when it runs again
    assert fair.counter(MEDIUM, "a") == 110


def test_an_answer_without_usage_keeps_its_estimate_and_a_failed_one_counts_nothing():
    fair = FairShare()
    fair.started("r1", LOW, request("a", prompt="x" * 40))
    fair.ran("r1", None, ok=True)
    assert fair.counter(LOW, "a") == 10
    fair.started("r2", LOW, request("a", prompt="x" * 40))
    fair.ran("r2", None, ok=False)
    assert fair.counter(LOW, "a") == 10
    # Another worker's answer without usage: nothing known was served.
    fair.answered(ResponseRecord(request_id="r3", status="ok", tenant="a", priority=LOW))
    assert fair.counter(LOW, "a") == 10


def test_a_tenant_back_from_idle_starts_at_the_smallest_backlogged_counter():
    fair = FairShare()
    fair.answered(answer("1", "busy", prompt=1000, completion=0))
    fair.answered(answer("2", "other", prompt=800, completion=0))
    fair.backlogged(MEDIUM, "idle", ["busy", "other"])
    assert fair.counter(MEDIUM, "idle") == 800  # no banked credit
    fair.answered(answer("3", "idle", prompt=5000, completion=0))
    fair.backlogged(MEDIUM, "idle", ["busy", "other"])
    assert fair.counter(MEDIUM, "idle") == 5800  # never lowered
    fair.backlogged(MEDIUM, "alone", [])
    assert fair.counter(MEDIUM, "alone") == 0  # nobody left yet
    fair.idle(MEDIUM, "busy")  # busy stops waiting, at 1000
    fair.backlogged(MEDIUM, "alone", [])
    assert fair.counter(MEDIUM, "alone") == 1000


# --- the scheduler -------------------------------------------------------------------------


def scheduler(fair: FairShare | None, slots: int = 1) -> Scheduler:
    spec = PoolSpec(name="p", backend="mock", models=["*"], slots=slots)
    fleet = Fleet.from_spec(FleetSpec(pools=[spec]))
    return Scheduler(fleet, SlotTable("w", slots, 10_000), fair=fair)


def waiting(s: Scheduler, tenant: str | None, name: str, at: int, level=MEDIUM, prompt="x" * 40):
    tp = TopicPartition(f"x.requests.{level.value}", 0)
    record = request(tenant, prompt, name).model_copy(update={"priority": level})
    s.waiting.push(Pending(level, tp, at, at, record, name))


def serve(s: Scheduler, fair: FairShare, count: int) -> list[str]:
    """Take ``count`` requests, each answered at once with its estimate as its usage."""
    order = []
    for _ in range(count):
        pending = s.pick()
        order.append(pending.request_id)
        fair.started(pending.request_id, pending.priority, pending.request)
        tokens = len(pending.request.prompt) // 4
        fair.ran(pending.request_id, {"prompt_tokens": tokens, "completion_tokens": 0}, True)
    return order


def test_a_flooding_tenant_takes_turns_with_a_small_one():
    fair = FairShare()
    s = scheduler(fair)
    for i in range(10):
        waiting(s, "flood", f"f{i}", i)
    waiting(s, "small", "s0", 20)
    waiting(s, "small", "s1", 21)
    order = serve(s, fair, 6)
    # The flood's first goes (the first tenant seen), then they alternate: each is FIFO.
    assert order == ["f0", "s0", "f1", "s1", "f2", "f3"]


def test_without_fair_shares_a_level_is_fifo_whoever_is_waiting():
    s = scheduler(None)
    for i in range(3):
        waiting(s, "flood", f"f{i}", i)
    waiting(s, "small", "s0", 20)
    assert [s.pick().request_id for _ in range(4)] == ["f0", "f1", "f2", "s0"]


def test_shares_follow_the_weights_in_tokens_not_requests():
    fair = FairShare({"heavy": 2.0})
    s = scheduler(fair)
    for i in range(60):
        waiting(s, "heavy", f"h{i}", i)
        waiting(s, "light", f"l{i}", i)
        waiting(s, None, f"d{i}", i, prompt="x" * 80)  # twice the tokens per request
    served = Counter(name[0] for name in serve(s, fair, 80))
    tokens = {"h": served["h"] * 10, "l": served["l"] * 10, "d": served["d"] * 20}
    total = sum(tokens.values())
    assert abs(tokens["h"] / total - 0.5) < 0.03  # weight 2 of 4
    assert abs(tokens["l"] / total - 0.25) < 0.03
    assert abs(tokens["d"] / total - 0.25) < 0.03  # half the requests: the same tokens
    assert fair.counter(MEDIUM, DEFAULT_TENANT) > 0


def test_priority_between_levels_is_unchanged_by_fair_shares():
    fair = FairShare()
    s = scheduler(fair)
    waiting(s, "a", "low-a", 1, LOW)
    waiting(s, "b", "high-b", 2, HIGH)
    waiting(s, "a", "high-a", 3, HIGH)
    assert serve(s, fair, 3) == ["high-b", "high-a", "low-a"]


def test_a_tenant_that_comes_back_after_the_other_left_gets_no_burst_either():
    fair = FairShare()
    s = scheduler(fair)
    for i in range(10):
        waiting(s, "a", f"a{i}", i)
    serve(s, fair, 10)  # a alone, and then nobody waits
    for i in range(4):
        waiting(s, "b", f"b{i}", 100 + i)
    for i in range(4):
        waiting(s, "a", f"a{10 + i}", 200 + i)
    order = serve(s, fair, 4)
    assert Counter(name[0] for name in order)["b"] <= 3  # not b's four in a row


def test_an_idle_tenant_gets_no_burst_when_it_comes_back():
    fair = FairShare()
    s = scheduler(fair)
    for i in range(40):
        waiting(s, "a", f"a{i}", i)
    serve(s, fair, 20)  # a alone: every slot (work-conserving)
    for i in range(10):
        waiting(s, "b", f"b{i}", 100 + i)  # b starts at a's counter, not at 0
    order = serve(s, fair, 10)
    assert Counter(name[0] for name in order) == {"a": 5, "b": 5}
