"""The worker's fetch loop: request records into the waiting requests, with backpressure.

``getmany`` from the three request topics; each record is decoded into a ``Pending`` (or
dead-lettered: not a request, or for a model no pool serves) and, unless the worker says
its id has had or is having its run (``duplicate``), pushed into the
``WaitingRequests``. A level whose buffer is full has its partitions paused, and resumed at
half (backpressure, never dropping). A level of several partitions is held back partition
by partition instead: each may hold its share of the level's buffer, so that one
partition's flood (a tenant's: producers put a tenant's requests on one partition) leaves
room for the others' requests, which fair shares then see. ``wake`` wakes the dispatch
loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from ..config import Settings
from ..decoding import Undecodable, decode_request
from ..fleet.pools import Fleet
from ..schemas import PRIORITIES, Priority
from ..topics import Topics
from .answers import Answers
from .waiting import Pending, WaitingRequests

_FETCH_TIMEOUT_MS = 1000
# Records decoded between two yields of the fetch loop: a big fetch must not hold the
# event loop for long while a released slot waits for its next record.
_DECODE_SLICE = 32


class Intake:
    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        fleet: Fleet,
        waiting: WaitingRequests,
        answers: Answers,
        *,
        wake: Callable[[], None],
        duplicate: Callable[[Pending], bool],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        stir: Callable[[], None],
    ):
        self.settings = settings
        self.topics = topics
        self.fleet = fleet
        self.waiting = waiting
        self.answers = answers
        self._duplicate = duplicate
        self._spawn = spawn
        self._stir = stir  # records flow: keep the fetches short
        self._wake = wake  # records are waiting: the dispatch (and preemption) loop looks
        #: levels whose partitions are paused
        self.paused: set[Priority] = set()
        #: partitions paused for holding their share of their level's buffer
        self.paused_partitions: set[TopicPartition] = set()
        self._consumer: AIOKafkaConsumer

    def attach(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    async def run(self) -> None:
        cap = self.settings.worker_buffer_per_priority
        while True:
            room = self._room(cap)
            batch = await self._consumer.getmany(
                timeout_ms=_FETCH_TIMEOUT_MS, max_records=max(room, 1)
            )
            if not batch:
                continue
            self._stir()
            if not self.answers.settled():
                # Exactly-once: a rebalance is settling; what was fetched meanwhile is
                # filtered by the offsets read once it has (``floor``).
                await self.answers.wait_settled()
            assignment = self._consumer.assignment()
            accepted = 0
            # Most urgent partitions first: a yield below must never let a low be popped
            # while a high of the same fetch is still undecoded.
            for tp, records in sorted(batch.items(), key=lambda item: self._rank(item[0])):
                if tp not in assignment:
                    continue  # revoked while this batch waited
                priority = self.topics.priority_of(tp.topic)
                floor = self.answers.floor(tp)
                for record in records:
                    if record.offset < floor:
                        continue
                    self._accept(tp, priority, record)
                    accepted += 1
                    if accepted % _DECODE_SLICE == 0:
                        # Let a slot that just freed take what is decoded so far.
                        self._wake()
                        await asyncio.sleep(0)
            self._wake()
            self.apply_backpressure()

    def _room(self, cap: int) -> int:
        """How many records may be fetched now: what the levels (or the partitions of a
        level of several) that are not held back have room for."""
        room = 0
        assignment = self._consumer.assignment()
        for priority in PRIORITIES:
            partitions = self._partitions_of(priority, assignment)
            if len(partitions) > 1:
                share = cap // len(partitions)
                room += sum(max(0, share - self.waiting.held(priority, tp)) for tp in partitions
                            if tp not in self.paused_partitions)  # fmt: skip
            elif priority not in self.paused:
                room += cap - self.waiting.depth(priority)
        return room

    def _rank(self, tp: TopicPartition) -> int:
        return self.topics.priority_of(tp.topic).rank

    def _accept(self, tp: TopicPartition, priority: Priority, record: ConsumerRecord) -> None:
        self.answers.offsets.track(tp, record.offset)
        decoded = decode_request(record, priority)
        if not isinstance(decoded, Undecodable) and not self.fleet.serves(decoded.model_id):
            served = ", ".join(self.fleet.models)
            decoded = Undecodable(
                f"model {decoded.model_id!r} is served by no pool (served: {served})",
                decoded.request_id,
            )
        if isinstance(decoded, Undecodable):
            self._spawn(self.answers.dead_letter(tp, record, decoded))
            return
        pending = Pending(
            priority=priority,
            tp=tp,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            request=decoded,
            request_id=decoded.request_id or "",
            generation=self.answers.generation,
        )
        if not self._duplicate(pending):
            self.waiting.push(pending)

    def apply_backpressure(self) -> None:
        cap = self.settings.worker_buffer_per_priority
        assignment = self._consumer.assignment()
        for priority in PRIORITIES:
            depth = self.waiting.depth(priority)
            partitions = self._partitions_of(priority, assignment)
            if len(partitions) > 1:
                self._partition_backpressure(priority, partitions, cap // len(partitions))
                continue
            if priority not in self.paused and depth >= cap:
                self.paused.add(priority)
                self._consumer.pause(*partitions)
            elif priority in self.paused and depth <= cap // 2:
                self.paused.discard(priority)
                self._consumer.resume(*partitions)

    def _partition_backpressure(
        self, priority: Priority, partitions: list[TopicPartition], share: int
    ) -> None:
        for tp in partitions:
            held = self.waiting.held(priority, tp)
            if tp not in self.paused_partitions and held >= max(share, 1):
                self.paused_partitions.add(tp)
                self._consumer.pause(tp)
            elif tp in self.paused_partitions and held <= share // 2:
                self.paused_partitions.discard(tp)
                self._consumer.resume(tp)

    def relieve(self) -> None:
        """A request left the waiting ones: a paused level or partition may resume."""
        if self.paused or self.paused_partitions:
            self.apply_backpressure()

    def assigned(self) -> None:
        """A new assignment: nothing is paused in it yet."""
        self.paused.clear()
        self.paused_partitions.clear()
        self.apply_backpressure()

    def _partitions_of(
        self, priority: Priority, assignment: Collection[TopicPartition]
    ) -> list[TopicPartition]:
        topic = self.topics.request(priority)
        return [tp for tp in assignment if tp.topic == topic]
