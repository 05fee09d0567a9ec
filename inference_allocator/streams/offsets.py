"""Which request offsets may be committed: the contiguous completed prefix per partition."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from aiokafka import TopicPartition


class OffsetTracker:
    """Tracks fetched offsets until they complete, in any order.

    A partition's commit position only moves past an offset once it and every offset before
    it are complete, so a crash re-delivers everything not yet answered (at-least-once).
    """

    def __init__(self) -> None:
        self._open: dict[TopicPartition, deque[int]] = {}
        self._done: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def track(self, tp: TopicPartition, offset: int) -> None:
        """Record a fetched offset (offsets of a partition arrive in increasing order)."""
        self._open.setdefault(tp, deque()).append(offset)
        self._done.setdefault(tp, set())

    def complete(self, tp: TopicPartition, offset: int) -> bool:
        """Mark an offset answered; True when the partition's commit position advanced."""
        open_offsets = self._open.get(tp)
        if not open_offsets:
            return False  # the partition was revoked meanwhile
        done = self._done[tp]
        done.add(offset)
        advanced = False
        while open_offsets and open_offsets[0] in done:
            head = open_offsets.popleft()
            done.discard(head)
            self._next[tp] = head + 1
            advanced = True
        return advanced

    def committable(self) -> dict[TopicPartition, int]:
        """Positions to commit now (only those that moved since the last ``committed``)."""
        return {
            tp: position
            for tp, position in self._next.items()
            if self._committed.get(tp) != position
        }

    def position(self, tp: TopicPartition) -> int | None:
        """Where the completed prefix of ``tp`` ends (every offset below it is complete)."""
        return self._next.get(tp)

    def committed(self, positions: dict[TopicPartition, int]) -> None:
        self._committed.update(positions)

    def in_progress(self, tp: TopicPartition) -> int:
        return len(self._open.get(tp, ()))

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            for table in (self._open, self._done, self._next, self._committed):
                table.pop(tp, None)
