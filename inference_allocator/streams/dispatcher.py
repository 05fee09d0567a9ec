"""The worker's bounded priority structure of fetched, not yet dispatched records."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition

from ..schemas import PRIORITIES, Priority, RequestRecord, now_ms
from .policies import DispatchPolicy, StrictPolicy


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

    @property
    def origin(self) -> str:
        """The record it came from, as answers name it (``ResponseRecord.origin``)."""
        return f"{self.tp.topic}:{self.tp.partition}:{self.offset}"


class PriorityDispatcher:
    """Hands out the oldest waiting record of the level the policy picks.

    Records of one level are kept per partition (each partition is already FIFO); the
    oldest of a level is the partition head with the smallest record timestamp, ties broken
    by arrival order. Nothing here does I/O: the worker pushes what it fetches and pops when
    a GPU slot is free, so the decision is made at dispatch time, never at fetch time.
    """

    def __init__(
        self,
        policy: DispatchPolicy | None = None,
        max_wait_ms: Mapping[Priority, int] | None = None,
        clock: Callable[[], int] = now_ms,
    ):
        self.policy = policy or StrictPolicy()
        # Ageing: a level's oldest request that has waited (since its record's timestamp)
        # longer than its bound goes first, whatever the policy says: no starvation under
        # strict priority, with the bound as the promise.
        self.max_wait_ms = dict(max_wait_ms or {})
        self._clock = clock
        self._skipped: tuple[TopicPartition, int] | None = None  # the oldest passed over
        self._skips = 0
        self._queues: dict[Priority, dict[TopicPartition, deque[tuple[int, Pending]]]] = {
            p: {} for p in PRIORITIES
        }
        self._depth = {p: 0 for p in PRIORITIES}
        self._ids: dict[str, int] = {}  # how many records of each request id wait
        self._arrival = itertools.count()

    def __len__(self) -> int:
        return sum(self._depth.values())

    def depth(self, priority: Priority) -> int:
        return self._depth[priority]

    def holds(self, request_id: str) -> bool:
        """Whether a record of ``request_id`` waits here."""
        return request_id in self._ids

    def push(self, pending: Pending) -> None:
        queue = self._queues[pending.priority].setdefault(pending.tp, deque())
        queue.append((next(self._arrival), pending))
        self._depth[pending.priority] += 1
        self._ids[pending.request_id] = self._ids.get(pending.request_id, 0) + 1

    def _left(self, pending: Pending) -> Pending:
        """Count ``pending`` out of the waiting ids."""
        count = self._ids.pop(pending.request_id, 1) - 1
        if count:
            self._ids[pending.request_id] = count
        return pending

    def pop(self, serves: Callable[[str], bool] | None = None) -> Pending | None:
        """The next record to dispatch, or None when nothing waits.

        ``serves`` narrows the choice to the requests a slot's pool can run (by model):
        the policy then chooses among the levels that have such a request, and the oldest
        such request of that level goes, so priority and FIFO hold among what the slot can
        run. Without it every request is runnable (the fast path).
        """
        if serves is None:
            waiting = [p for p in PRIORITIES if self._depth[p]]
            if not waiting:
                return None
            aged = self._aged(waiting, self._oldest) if self.max_wait_ms else None
            level = aged or self.policy.choose(waiting)
            queues = self._queues[level]
            _, _, tp = min((q[0][1].timestamp_ms, q[0][0], tp) for tp, q in queues.items() if q)
            _, pending = queues[tp].popleft()
            self._depth[level] -= 1
            return self._left(pending)
        chosen = self._choose_level(serves)
        if chosen is None:
            return None
        level, (_, _, tp, index) = chosen
        return self._take(level, tp, index)

    def _choose_level(
        self, serves: Callable[[str], bool]
    ) -> tuple[Priority, tuple[int, int, TopicPartition, int]] | None:
        """The level the policy picks among those with a runnable request, with that
        level's oldest runnable one."""
        candidates = {}
        for level in PRIORITIES:
            if self._depth[level]:
                best = self._oldest_runnable(level, serves)
                if best is not None:
                    candidates[level] = best
        if not candidates:
            return None
        levels = [p for p in PRIORITIES if p in candidates]
        aged = self._aged(levels, lambda p: candidates[p][0]) if self.max_wait_ms else None
        level = aged or self.policy.choose(levels)
        return level, candidates[level]

    def _aged(self, levels: list[Priority], oldest: Callable[[Priority], int]) -> Priority | None:
        """Of ``levels`` with an ageing bound, the one whose oldest request is past it and
        has waited longest; None when none is."""
        now = self._clock()
        overdue = [
            (oldest(level), level.rank, level)
            for level in levels
            if level in self.max_wait_ms and now - oldest(level) >= self.max_wait_ms[level]
        ]
        return min(overdue)[2] if overdue else None

    def _oldest(self, level: Priority) -> int:
        """The record timestamp of the oldest request waiting at ``level``."""
        return min(q[0][1].timestamp_ms for q in self._queues[level].values() if q)

    def pop_warm(
        self, serves: Callable[[str], bool], free: list[tuple[int, str | None]], window: int
    ) -> tuple[int, Pending] | None:
        """Warm affinity for a pool whose slots load models: ``free`` is its free slots
        (longest free first) with the model each has loaded.

        The policy picks the level as ``pop`` does; that level's oldest runnable request
        goes to a free slot that has its model loaded if there is one. Otherwise, a request
        among the next ``window`` of the *same* level (never another level) whose model a
        free slot has loaded may go first, so a warm slot runs a warm request instead of
        loading; the oldest is passed over at most ``window`` times in a row. Else the
        oldest goes cold to the longest-free slot.
        """
        chosen = self._choose_level(serves)
        if chosen is None:
            return None
        level = chosen[0]
        warm: dict[str, int] = {}
        for gpu_id, model in free:
            if model is not None:
                warm.setdefault(model, gpu_id)
        runnable = self._runnable_in_order(level, serves, window + 1)
        oldest = runnable[0]
        _, _, tp, index, pending = oldest
        if pending.request.model_id in warm:
            return warm[pending.request.model_id], self._take(level, tp, index)
        key = (tp, pending.offset)
        if self._skipped != key:
            self._skipped, self._skips = key, 0
        if self._skips < window:
            for _, _, later_tp, later_index, later in runnable[1:]:
                if later.request.model_id in warm:
                    self._skips += 1
                    return warm[later.request.model_id], self._take(level, later_tp, later_index)
        self._skipped, self._skips = None, 0
        return free[0][0], self._take(level, tp, index)

    def _runnable_in_order(
        self, level: Priority, serves: Callable[[str], bool], limit: int
    ) -> list[tuple[int, int, TopicPartition, int, Pending]]:
        """The level's first ``limit`` runnable requests, oldest first across partitions."""
        found = []
        for tp, queue in self._queues[level].items():
            taken = 0
            for index, (arrival, pending) in enumerate(queue):
                if serves(pending.request.model_id):
                    found.append((pending.timestamp_ms, arrival, tp, index, pending))
                    taken += 1
                    if taken >= limit:
                        break
        found.sort(key=lambda entry: entry[:2])
        return found[:limit]

    def _take(self, level: Priority, tp: TopicPartition, index: int) -> Pending:
        queue = self._queues[level][tp]
        _, pending = queue[index]
        del queue[index]
        self._depth[level] -= 1
        return self._left(pending)

    def _oldest_runnable(
        self, level: Priority, serves: Callable[[str], bool]
    ) -> tuple[int, int, TopicPartition, int] | None:
        """(timestamp, arrival, partition, index) of the level's oldest runnable request:
        the first runnable one of each partition (partitions are FIFO), then the oldest."""
        best: tuple[int, int, TopicPartition, int] | None = None
        for tp, queue in self._queues[level].items():
            for index, (arrival, pending) in enumerate(queue):
                if serves(pending.request.model_id):
                    key = (pending.timestamp_ms, arrival, tp, index)
                    if best is None or key[:2] < best[:2]:
                        best = key
                    break
        return best

    def remove(self, request_id: str) -> Pending | None:
        """Take a waiting request out by id (a cancellation); None if it is not waiting."""
        for level in PRIORITIES:
            for queue in self._queues[level].values():
                for index, (_, pending) in enumerate(queue):
                    if pending.request_id == request_id:
                        del queue[index]
                        self._depth[level] -= 1
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
        return dropped
