"""The status read models: live, busy and expired slots; waiting requests."""

from aiokafka import TopicPartition

from inference_allocator.consumers.views import BacklogView, SlotTableView, system_status
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
