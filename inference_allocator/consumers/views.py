"""Read models of the cluster: the slot table and the request backlog."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from ..schemas import PRIORITIES, Priority, SlotRecord, SystemStatus, WorkerStatus, now_ms
from ..topics import Topics


class SlotTableView:
    """The latest state of every GPU slot, folded from the compacted slot-table topic."""

    def __init__(self) -> None:
        self.slots: dict[str, SlotRecord] = {}

    def apply(self, slot_id: str, record: SlotRecord | None) -> None:
        if record is None:
            self.slots.pop(slot_id, None)
        else:
            self.slots[slot_id] = record

    def leased(self, now: int) -> list[SlotRecord]:
        """Live leases (expired ones belong to a worker that stopped answering)."""
        return [
            s
            for s in self.slots.values()
            if s.state == "leased" and (s.expires_at_ms is None or s.expires_at_ms > now)
        ]

    def expired(self, now: int) -> int:
        return sum(
            1
            for s in self.slots.values()
            if s.state == "leased" and s.expires_at_ms is not None and s.expires_at_ms <= now
        )

    def workers(self, now: int) -> list[WorkerStatus]:
        total: dict[str, int] = defaultdict(int)
        busy: dict[str, int] = defaultdict(int)
        for slot in self.slots.values():
            total[slot.worker_id] += 1
        for slot in self.leased(now):
            busy[slot.worker_id] += 1
        return [
            WorkerStatus(worker_id=w, gpus_total=total[w], gpus_busy=busy[w]) for w in sorted(total)
        ]


@dataclass
class BacklogView:
    """Requests on the request topics that the worker group has not answered yet.

    ``highwater`` comes from fetch responses (Tansu's ListOffsets is wrong after batched
    produces) and ``committed`` from the worker group's committed offsets.
    """

    topics: Topics
    highwater: dict[TopicPartition, int] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    log_start: dict[TopicPartition, int] = field(default_factory=dict)

    def unanswered(self) -> dict[Priority, int]:
        depth = {p: 0 for p in PRIORITIES}
        for tp, high in self.highwater.items():
            start = self.committed.get(tp, self.log_start.get(tp, 0))
            depth[self.topics.priority_of(tp.topic)] += max(0, high - start)
        return depth


def waiting(slots: SlotTableView, backlog: BacklogView, now: int) -> dict[Priority, int]:
    """Requests not yet started, per level: unanswered ones minus those holding a slot."""
    depth = backlog.unanswered()
    for lease in slots.leased(now):
        if lease.priority is not None:
            depth[lease.priority] = max(0, depth[lease.priority] - 1)
    return depth


def system_status(slots: SlotTableView, backlog: BacklogView) -> SystemStatus:
    """What ``GET /api/v1/status`` reports."""
    now = now_ms()
    leased = slots.leased(now)
    depth = waiting(slots, backlog, now)
    expired = slots.expired(now)
    return SystemStatus(
        queue_size=sum(depth.values()),
        gpus_available=len(slots.slots) - len(leased) - expired,
        gpus_busy=len(leased),
        gpus_expired=expired,
        queue_depth=depth,
        workers=slots.workers(now),
    )
