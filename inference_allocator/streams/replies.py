"""How a worker gives an answer: a streamed request's stream ends first (``done``), each
answer is counted and, at debug, logged with the request's fields; and the answers of the
requests that never got a slot (expired, cancelled)."""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaProducer

from .. import logs
from ..metrics import WorkerMetrics
from ..schemas import ResponseRecord
from ..topics import Topics
from .answers import Answers
from .chunk_writer import ChunkWriter
from .dispatcher import Pending
from .slots import SlotTable

log = logging.getLogger("inference_allocator.streams.worker")


class Replies:
    def __init__(
        self,
        answers: Answers,
        topics: Topics,
        slots: SlotTable,
        worker_id: str,
        metrics: WorkerMetrics,
    ):
        self.answers = answers
        self.topics = topics
        self.slots = slots
        self.worker_id = worker_id
        self.metrics = metrics
        self._producer: AIOKafkaProducer

    def attach(self, producer: AIOKafkaProducer) -> None:
        """The producer chunks go out with (the worker's, never a transactional one)."""
        self._producer = producer

    async def give(
        self, pending: Pending, response: ResponseRecord, writer: ChunkWriter | None = None
    ) -> None:
        """Give ``response``; a streamed request's stream ends first (``done``)."""
        if pending.request.stream:
            await (writer or self.writer(pending)).finish(response)
        self.metrics.answers.inc(response.status, pending.priority)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("answered %s", response.status, extra=self.about(pending, response.gpu_id))
        await self.answers.respond(pending, response)

    def writer(self, pending: Pending) -> ChunkWriter:
        """The chunks of one run of a streamed request."""
        return ChunkWriter(self._producer, self.topics.chunks, pending.request_id, self.worker_id)

    def about(self, pending: Pending, gpu_id: int | None = None) -> dict[str, str]:
        """The fields of a log line about ``pending``."""
        slot = self.slots.slot_id(gpu_id) if gpu_id is not None else None
        return logs.about(
            pending.request_id, pending.priority.value, pending.request.model_id,
            self.worker_id, slot,
        )  # fmt: skip

    def cancelled(self, pending: Pending, now: int) -> ResponseRecord:
        return self._not_run(pending, now, "cancelled", "cancelled before it ran")

    def expired(self, pending: Pending, now: int) -> ResponseRecord:
        late = now - (pending.request.deadline_ms or now)
        error = f"deadline passed {late} ms before a GPU slot was free; not executed"
        return self._not_run(pending, now, "expired", error)

    def _not_run(self, pending: Pending, now: int, status: str, error: str) -> ResponseRecord:
        """The answer to a request that never got a slot."""
        return ResponseRecord(
            request_id=pending.request_id,
            model_id=pending.request.model_id,
            status=status,
            worker_id=self.worker_id,
            priority=pending.priority,
            queue_time_ms=queue_time(pending, now),
            completed_at_ms=now,
            tenant=pending.request.tenant,
            error=error,
            origin=pending.origin,
        )


def queue_time(pending: Pending, until_ms: int) -> float:
    """Milliseconds from the request's submission (or its record's time) to ``until_ms``."""
    since = pending.request.submitted_at_ms or pending.timestamp_ms
    return float(max(0, until_ms - since))
