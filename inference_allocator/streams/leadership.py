"""Leadership and membership: in ``leader`` mode one member of the worker group owns every request
partition, so one dispatcher sees every waiting request and priority holds across the
fleet; the other workers stand by and take over through Kafka's group protocol.

``LeaderAssignor`` is the group's partition assignor: every partition goes to one member.
Leadership is sticky: each member says in its join metadata when it became leader (empty if
it does not lead), and the member that became leader last keeps it, so a rebalance caused by
a worker joining or leaving does not move the partitions, and a leader that was paused (and
evicted meanwhile) cannot take them back from its successor when it returns. With no
claimant (the leader died), the member with the smallest id becomes leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

log = logging.getLogger(__name__)


class LeaderAssignor(AbstractPartitionAssignor):
    """All partitions of the subscribed topics to one member (one instance per worker)."""

    name = "inference-allocator-leader"
    version = 0

    def __init__(self) -> None:
        self.leader_since_ms: int | None = None

    def assign(  # type: ignore[override]
        self,
        cluster: ClusterMetadata,
        members: Mapping[str, ConsumerProtocolMemberMetadata],
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        leader = choose_leader({m: meta.user_data for m, meta in members.items()})
        topics = sorted({t for meta in members.values() for t in meta.subscription})
        everything = []
        for topic in topics:
            partitions = cluster.partitions_for_topic(topic)
            if partitions:
                everything.append((topic, sorted(partitions)))
        log.info("leader of the worker group: %s (%d members)", leader, len(members))
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version, everything if member == leader else [], b""
            )
            for member in members
        }

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:  # type: ignore[override]
        claim = str(self.leader_since_ms).encode() if self.leader_since_ms else b""
        return ConsumerProtocolMemberMetadata(self.version, list(topics), claim)

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:  # type: ignore[override]
        leads = any(partitions for _, partitions in assignment.assignment)
        if leads and self.leader_since_ms is None:
            self.leader_since_ms = time.time_ns() // 1_000_000
        elif not leads:
            self.leader_since_ms = None


def choose_leader(claims: Mapping[str, bytes]) -> str:
    """The member that became leader last, else the smallest member id."""
    claimed = {m: int(c) for m, c in claims.items() if c and c.isdigit()}
    if claimed:
        return max(claimed, key=lambda m: (claimed[m], m))
    return min(claims)


class Membership:
    """What a worker knows of its place in the group.

    ``leading``: in leader mode, whether it owns the request partitions (a standby does not
    announce its slots); in shared mode always. ``stalled()``: whether the whole process was
    stopped (SIGSTOP, a VM pause) for longer than the session timeout, after which the group
    has evicted it and another worker may run its requests: nothing is dispatched until the
    next rebalance (``assigned``) says who owns what. A ``watch()`` loop ticks every 100 ms;
    a gap between ticks is the stop.
    """

    TICK_S = 0.1

    def __init__(self, worker_id: str, leader_mode: bool, session_timeout_s: float):
        self.worker_id = worker_id
        self.assignor = LeaderAssignor() if leader_mode else None
        self.leading = not leader_mode
        self.session_timeout_s = session_timeout_s
        self._tick = 0.0
        self._suspended = False
        self._confirmed = asyncio.Event()

    def started(self) -> None:
        self._tick = asyncio.get_running_loop().time()

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.TICK_S)
            self.stalled()
            self._tick = loop.time()

    def stalled(self) -> bool:
        gap = asyncio.get_running_loop().time() - self._tick
        if gap > self.session_timeout_s and not self._suspended:
            log.warning(
                "worker %s was stopped for %.1f s, past the session timeout: not dispatching "
                "until the group's next rebalance",
                self.worker_id,
                gap,
            )
            self._suspended = True
            self._confirmed.clear()
        return self._suspended

    async def wait_until_confirmed(self) -> None:
        await self._confirmed.wait()
        self._tick = asyncio.get_running_loop().time()

    def assigned(self, owns_partitions: bool) -> bool | None:
        """A rebalance finished: membership is confirmed. Returns True when this worker
        starts leading, False when it starts standing by, None when nothing changed."""
        self._suspended = False
        self._confirmed.set()
        if self.assignor is None or owns_partitions == self.leading:
            return None
        self.leading = owns_partitions
        return owns_partitions
