"""The status read models: live, busy and expired slots; waiting requests."""

from aiokafka import TopicPartition

from inference_allocator.consumers.views import BacklogView, SlotTableView, system_status, tenants
from inference_allocator.schemas import Priority, SlotRecord, now_ms
from inference_allocator.topics import Topics


def slot(worker: str, gpu: int, state: str, expires_in_ms: int, priority=None) -> SlotRecord:
    now = now_ms()
    return SlotRecord(
        slot_id=f"{worker}/{gpu}",
        worker_id=worker,
        gpu_id=gpu,
        state=state,
        priority=priority,
        expires_at_ms=now + expires_in_ms,
        updated_at_ms=now,
    )


def test_status_counts_live_slots_and_subtracts_running_requests_from_the_backlog():
    topics = Topics("x")
    slots = SlotTableView()
    for record in (
        slot("a", 0, "leased", 60_000, Priority.HIGH),
        slot("a", 1, "free", 60_000),
        slot("dead", 0, "leased", -1, Priority.LOW),
        slot("dead", 1, "free", -1),
    ):
        slots.apply(record.slot_id, record)
    backlog = BacklogView(topics)
    high = TopicPartition(topics.request(Priority.HIGH), 0)
    low = TopicPartition(topics.request(Priority.LOW), 0)
    backlog.highwater.update({high: 10, low: 5})
    backlog.committed.update({high: 7})  # 3 unanswered highs, one of them running

    status = system_status(slots, backlog)
    assert (status.gpus_available, status.gpus_busy, status.gpus_expired) == (1, 1, 2)
    assert status.queue_depth == {Priority.HIGH: 2, Priority.MEDIUM: 0, Priority.LOW: 5}
    assert status.queue_size == 7
    assert [w.worker_id for w in status.workers] == ["a"]


def test_a_tombstone_removes_the_slot():
    slots = SlotTableView()
    record = slot("a", 0, "free", 60_000)
    slots.apply(record.slot_id, record)
    slots.apply(record.slot_id, None)
    assert slots.slots == {}


def window(model: str, priority: str, start_ms: int, seconds: int, tenants: dict) -> dict:
    return {
        "model": model,
        "priority": priority,
        "window": f"{seconds}s",
        "start_ms": start_ms,
        "end_ms": start_ms + seconds * 1000,
        "tenants": tenants,
    }


def test_tenants_show_running_slots_and_their_share_of_the_latest_shortest_window():
    leased = [
        slot("a", 0, "leased", 60_000, Priority.MEDIUM).model_copy(update={"tenant": "team-a"}),
        slot("a", 1, "leased", 60_000, Priority.MEDIUM).model_copy(update={"tenant": "team-a"}),
        slot("a", 2, "leased", 60_000, Priority.HIGH),  # no tenant: the default one
    ]
    windows = [
        # the latest 10 s windows of two models at medium: summed per tenant
        window("m", "medium", 20_000, 10, {"team-a": 300, "team-b": 100}),
        window("n", "medium", 20_000, 10, {"team-b": 200}),
        window("m", "medium", 10_000, 10, {"team-a": 9_999}),  # older: not counted
        window("m", "medium", 0, 60, {"team-a": 50_000}),  # longer: not counted
        window("m", "low", 10_000, 10, {"team-c": 7}),  # ended before the latest
    ]
    found = {(t.tenant, t.priority.value): t for t in tenants(leased, windows)}

    assert set(found) == {("default", "high"), ("team-a", "medium"), ("team-b", "medium")}
    a, b = found[("team-a", "medium")], found[("team-b", "medium")]
    assert (a.running, a.tokens, a.share) == (2, 300, 0.5)
    assert (b.running, b.tokens, b.share) == (0, 300, 0.5)
    assert a.window == "10s" and a.window_end_ms == 30_000
    default = found[("default", "high")]
    assert (default.running, default.tokens, default.share, default.window) == (1, None, None, None)


def test_tenants_without_statistics_windows_show_only_what_runs():
    leased = [slot("a", 0, "leased", 60_000, Priority.LOW).model_copy(update={"tenant": "t"})]
    (only,) = tenants(leased, [{"broken": True}, {"start_ms": "x", "end_ms": 1}])
    assert (only.tenant, only.running, only.tokens) == ("t", 1, None)
    assert tenants([], []) == []
