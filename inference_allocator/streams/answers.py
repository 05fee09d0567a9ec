"""The worker's answers: responses and dead letters produced, then committed.

At-least-once: a request's offset is committed only after its response (or DLQ record) is
acknowledged, and only as part of the contiguous answered prefix of its partition
(``OffsetTracker``), by a commit loop off the hot path, at most once per
``INFERENCE_COMMIT_INTERVAL_MS``. Ids answered recently are remembered, so a redelivery is
not answered twice by this worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from ..config import Settings
from ..schemas import DeadLetter, ResponseRecord, now_ms
from ..topics import Topics
from .decoding import Undecodable
from .dispatcher import Pending
from .offsets import OffsetTracker

log = logging.getLogger(__name__)


class Answers:
    """Produces answers with ``producer`` and commits through ``consumer`` (set by
    ``attach`` once the worker's clients exist)."""

    def __init__(self, settings: Settings, topics: Topics, worker_id: str):
        self.settings = settings
        self.topics = topics
        self.worker_id = worker_id
        self.offsets = OffsetTracker()
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._commit_wanted = asyncio.Event()
        self._producer: AIOKafkaProducer
        self._consumer: AIOKafkaConsumer

    def attach(self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer) -> None:
        self._producer, self._consumer = producer, consumer

    def answered(self, request_id: str) -> bool:
        """Whether this worker answered ``request_id`` recently (a redelivery)."""
        return request_id in self._answered

    async def respond(self, pending: Pending, response: ResponseRecord) -> None:
        try:
            ack = await self._producer.send(
                self.topics.responses,
                response.model_dump_json(exclude_none=True).encode(),
                key=pending.request_id.encode(),
            )
            await ack
        except KafkaError as exc:
            # Not committed, so the request is redelivered after a restart.
            log.error("could not produce the response to %s: %s", pending.request_id, exc)
            return
        self._remember(pending.request_id)
        self.completed(pending.tp, pending.offset)

    async def dead_letter(
        self, tp: TopicPartition, record: ConsumerRecord, problem: Undecodable
    ) -> None:
        """The record to the DLQ, and an error response where its sender named an id."""
        log.warning(
            "%s[%d]@%d goes to the DLQ: %s", tp.topic, tp.partition, record.offset, problem.reason
        )
        letter = DeadLetter(
            reason=problem.reason,
            topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key else None,
            value=record.value.decode(errors="replace") if record.value is not None else None,
            request_id=problem.request_id,
            worker_id=self.worker_id,
            failed_at_ms=now_ms(),
        )
        try:
            acks = [
                await self._producer.send(
                    self.topics.dlq, letter.model_dump_json(exclude_none=True).encode(), record.key
                )
            ]
            if problem.request_id:
                error = ResponseRecord(
                    request_id=problem.request_id,
                    status="error",
                    worker_id=self.worker_id,
                    priority=self.topics.priority_of(tp.topic),
                    completed_at_ms=now_ms(),
                    error=problem.reason,
                )
                acks.append(
                    await self._producer.send(
                        self.topics.responses,
                        error.model_dump_json(exclude_none=True).encode(),
                        key=problem.request_id.encode(),
                    )
                )
            await asyncio.gather(*acks)
        except KafkaError as exc:
            log.error(
                "could not dead-letter %s[%d]@%d: %s", tp.topic, tp.partition, record.offset, exc
            )
            return
        self.completed(tp, record.offset)

    def completed(self, tp: TopicPartition, offset: int) -> None:
        """``offset`` needs no more work: commit it once the prefix before it is done."""
        if self.offsets.complete(tp, offset):
            self._commit_wanted.set()

    def _remember(self, request_id: str) -> None:
        if self.settings.dedup_window:
            self._answered[request_id] = None
            if len(self._answered) > self.settings.dedup_window:
                self._answered.popitem(last=False)

    async def commit_loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            try:
                await self.commit()
            except KafkaError as exc:  # e.g. a rebalance in progress; the next one retries
                log.warning("commit failed, will retry: %s", exc)
            # At most one commit per interval: under load one commit covers many answers.
            await asyncio.sleep(interval)

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit the answered prefix of every owned partition (or of ``only``)."""
        assignment = self._consumer.assignment()
        positions = {
            tp: pos
            for tp, pos in self.offsets.committable().items()
            if tp in assignment and (only is None or tp in only)
        }
        if positions:
            await self._consumer.commit(positions)
            self.offsets.committed(positions)
