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
from . import responses
from .answers import Answers
from .chunk_writer import ChunkWriter
from .slots import SlotTable
from .waiting import Pending

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
        return responses.not_run(
            pending, status="cancelled", error="cancelled before it ran",
            worker_id=self.worker_id, now=now,
        )  # fmt: skip

    def expired(self, pending: Pending, now: int) -> ResponseRecord:
        late = now - (pending.request.deadline_ms or now)
        error = f"deadline passed {late} ms before a GPU slot was free; not executed"
        return responses.not_run(
            pending, status="expired", error=error, worker_id=self.worker_id, now=now
        )
