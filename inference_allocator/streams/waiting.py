"""The worker's fetched requests that wait for a GPU slot, by level and by partition.

Nothing here decides anything: the ``Scheduler`` asks which requests wait (and which of
them a slot can run) and takes the one it chose. Nothing does I/O either: intake pushes
what it fetches, a cancellation removes one by id, a rebalance drops a partition's.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from aiokafka import TopicPartition

from ..schemas import PRIORITIES, Priority, RequestRecord
from .fair_share import tenant_of

#: which models a slot can run, by model id (None: every model)
Serves = Callable[[str], bool] | None


@dataclass(slots=True)
class Pending:
    """One decoded request waiting for a GPU slot, with where it came from."""

    priority: Priority
    tp: TopicPartition
    offset: int
    timestamp_ms: int
    request: RequestRecord
    request_id: str
    generation: int = 0  # of the assignment it was fetched under (see Answers.generation)
    preemptions: int = 0  # how often its run was cut short for a more urgent request
    requeued_at_ms: int = 0  # when it last came back to wait after a preemption

    @property
    def waiting_since_ms(self) -> int:
        """When it began to wait this time: its record's time, or its last preemption."""
        return max(self.timestamp_ms, self.requeued_at_ms)

    @property
    def origin(self) -> str:
        """The record it came from, as answers name it (``ResponseRecord.origin``)."""
        return f"{self.tp.topic}:{self.tp.partition}:{self.offset}"


class Candidate(NamedTuple):
    """A waiting request and where it sits; candidates order oldest first (by record
    timestamp, then arrival here)."""

    timestamp_ms: int
    arrival: int
    tp: TopicPartition
    index: int
    pending: Pending


class WaitingRequests:
    """Records of one level are kept per partition (each partition is already FIFO); the
    oldest of a level is the partition head with the smallest record timestamp, ties
    broken by arrival order."""

    def __init__(self) -> None:
        self._queues: dict[Priority, dict[TopicPartition, deque[tuple[int, Pending]]]] = {
            p: {} for p in PRIORITIES
        }
        self._depth = {p: 0 for p in PRIORITIES}
        self._ids: dict[str, int] = {}  # how many records of each request id wait
        self._arrival = itertools.count()
        self._requeued = itertools.count(-1, -1)  # before every arrival
        #: how many requests of each tenant wait, per level
        self._tenants: dict[Priority, dict[str, int]] = {p: {} for p in PRIORITIES}
        #: told when a tenant that had nothing waiting at a level has a request there
        #: (not one put back after a preemption): fair shares lift its counter
        self.on_backlogged: Callable[[Priority, str], None] | None = None
        #: told when a tenant has nothing waiting at a level any more
        self.on_idle: Callable[[Priority, str], None] | None = None

    def __len__(self) -> int:
        return sum(self._depth.values())

    def depth(self, priority: Priority) -> int:
        return self._depth[priority]

    def levels(self) -> list[Priority]:
        """The levels with a request waiting, most urgent first."""
        return [p for p in PRIORITIES if self._depth[p]]

    def held(self, level: Priority, tp: TopicPartition) -> int:
        """How many requests of partition ``tp`` (of ``level``'s topic) wait."""
        queue = self._queues[level].get(tp)
        return len(queue) if queue else 0

    def tenants(self, level: Priority) -> dict[str, int]:
        """The tenants with requests waiting at ``level``, and how many each."""
        return self._tenants[level]

    def holds(self, request_id: str) -> bool:
        """Whether a record of ``request_id`` waits here."""
        return request_id in self._ids

    def push(self, pending: Pending) -> None:
        queue = self._queues[pending.priority].setdefault(pending.tp, deque())
        queue.append((next(self._arrival), pending))
        self._depth[pending.priority] += 1
        self._ids[pending.request_id] = self._ids.get(pending.request_id, 0) + 1
        if self._count_tenant(pending, 1) == 1 and self.on_backlogged is not None:
            self.on_backlogged(pending.priority, tenant_of(pending.request))

    def requeue(self, pending: Pending) -> None:
        """Put back a request whose run was preempted: at the head of its partition, so that
        with its record's timestamp it is the oldest of its level again (or among them)."""
        queue = self._queues[pending.priority].setdefault(pending.tp, deque())
        queue.appendleft((next(self._requeued), pending))
        self._depth[pending.priority] += 1
        self._ids[pending.request_id] = self._ids.get(pending.request_id, 0) + 1
        self._count_tenant(pending, 1)

    def oldest(
        self, level: Priority, serves: Serves = None, tenant: str | None = None
    ) -> Candidate | None:
        """The level's oldest request (that ``serves`` can run, of ``tenant`` if given):
        the first such of each partition (partitions are FIFO), then the oldest of those."""
        best: Candidate | None = None
        if tenant is not None:
            for tp, queue in self._queues[level].items():
                for index, (arrival, pending) in enumerate(queue):
                    if tenant_of(pending.request) == tenant and (
                        serves is None or serves(pending.request.model_id)
                    ):
                        if best is None or (pending.timestamp_ms, arrival) < best[:2]:
                            best = Candidate(pending.timestamp_ms, arrival, tp, index, pending)
                        break
            return best
        if serves is None:  # the fast path: the partitions' heads
            for tp, queue in self._queues[level].items():
                if queue:
                    arrival, pending = queue[0]
                    if best is None or (pending.timestamp_ms, arrival) < best[:2]:
                        best = Candidate(pending.timestamp_ms, arrival, tp, 0, pending)
            return best
        for tp, queue in self._queues[level].items():
            for index, (arrival, pending) in enumerate(queue):
                if serves(pending.request.model_id):
                    if best is None or (pending.timestamp_ms, arrival) < best[:2]:
                        best = Candidate(pending.timestamp_ms, arrival, tp, index, pending)
                    break
        return best

    def runnable_tenants(self, level: Priority, serves: Serves) -> list[str]:
        """The tenants with a request at ``level`` that ``serves`` can run."""
        if serves is None:
            return list(self._tenants[level])
        found: dict[str, None] = {}
        for queue in self._queues[level].values():
            for _, pending in queue:
                if serves(pending.request.model_id):
                    found.setdefault(tenant_of(pending.request), None)
        return list(found)

    def in_order(self, level: Priority, serves: Serves, limit: int) -> list[Candidate]:
        """The level's first ``limit`` requests that ``serves`` can run, oldest first."""
        found = []
        for tp, queue in self._queues[level].items():
            taken = 0
            for index, (arrival, pending) in enumerate(queue):
                if serves is None or serves(pending.request.model_id):
                    found.append(Candidate(pending.timestamp_ms, arrival, tp, index, pending))
                    taken += 1
                    if taken >= limit:
                        break
        found.sort(key=lambda candidate: candidate[:2])
        return found[:limit]

    def take(self, candidate: Candidate) -> Pending:
        """Take ``candidate`` out (it must be current: nothing taken from its partition
        since it was found)."""
        queue = self._queues[candidate.pending.priority][candidate.tp]
        _, pending = queue[candidate.index]
        del queue[candidate.index]
        self._depth[pending.priority] -= 1
        self._count_tenant(pending, -1)
        return self._left(pending)

    def remove(self, request_id: str) -> Pending | None:
        """Take a waiting request out by id (a cancellation); None if it is not waiting."""
        for level in PRIORITIES:
            for queue in self._queues[level].values():
                for index, (_, pending) in enumerate(queue):
                    if pending.request_id == request_id:
                        del queue[index]
                        self._depth[level] -= 1
                        self._count_tenant(pending, -1)
                        return self._left(pending)
        return None

    def drop_partitions(self, tps: Iterable[TopicPartition]) -> int:
        """Forget records of partitions this worker no longer owns; returns how many."""
        dropped = 0
        for tp in tps:
            for level in PRIORITIES:
                queue = self._queues[level].pop(tp, None)
                if queue:
                    dropped += len(queue)
                    self._depth[level] -= len(queue)
                    for _, pending in queue:
                        self._left(pending)
                        self._count_tenant(pending, -1)
        return dropped

    def _count_tenant(self, pending: Pending, change: int) -> int:
        """Count one of ``pending``'s tenant in or out of its level; how many wait now."""
        counts = self._tenants[pending.priority]
        tenant = tenant_of(pending.request)
        count = counts.get(tenant, 0) + change
        if count:
            counts[tenant] = count
        else:
            counts.pop(tenant, None)
            if self.on_idle is not None:
                self.on_idle(pending.priority, tenant)
        return count

    def _left(self, pending: Pending) -> Pending:
        """Count ``pending`` out of the waiting ids."""
        count = self._ids.pop(pending.request_id, 1) - 1
        if count:
            self._ids[pending.request_id] = count
        return pending
