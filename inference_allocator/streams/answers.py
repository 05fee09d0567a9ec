"""The worker's answers: responses and dead letters produced, then committed.

At-least-once: a request's offset is committed only after its response (or DLQ record) is
acknowledged, and only as part of the contiguous answered prefix of its partition
(``OffsetTracker``), by a commit loop off the hot path, at most once per
``INFERENCE_COMMIT_INTERVAL_MS``. Ids answered recently are remembered, so a redelivery is
not answered twice by this worker, and each answer given joins the retained results at
once (``retained``), so a retry of the same id finds it before it is read back.

A produce that fails is retried with backoff (``RETRY_FIRST_S`` doubling to
``RETRY_MAX_S``) until the broker takes it: an unanswered offset would stop its
partition's committed prefix, and the queue size every bridge reports, until a restart.
Only an answer the broker can never take (larger than its limit) is replaced, by an error
response that says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord

from .. import logs
from ..config import Settings
from ..consumers.results import RetainedResults
from ..decoding import Undecodable
from ..metrics import WorkerMetrics
from ..producers.batches import RecordBatches
from ..schemas import DeadLetter, ResponseRecord, now_ms
from ..topics import Topics
from . import responses
from .offsets import OffsetTracker
from .waiting import Pending

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
#: the most of a bad record's value a dead letter carries (a request topic may hold records
#: near the broker's size limit, which a letter wrapping it would pass)
DLQ_VALUE_MAX_CHARS = 64 * 1024

# (topic, value, key) of one record to produce
_Record = tuple[str, bytes | None, bytes | None]


def _about(pending: Pending, worker_id: str) -> dict[str, str]:
    return logs.about(
        pending.request_id, pending.priority.value, pending.request.model_id, worker_id
    )


class Answers:
    """Produces answers with ``producer`` and commits through ``consumer`` (set by
    ``attach`` once the worker's clients exist)."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        worker_id: str,
        metrics: WorkerMetrics | None = None,
    ):
        self.settings = settings
        self.topics = topics
        self.worker_id = worker_id
        self.offsets = OffsetTracker()
        self._answered: OrderedDict[str, None] = OrderedDict()
        #: every answer of the retention window, this worker's as soon as given
        self.retained = RetainedResults(int(settings.result_retention_seconds * 1000))
        self._commit_wanted = asyncio.Event()
        #: counts rebalances (exactly-once: an answer to a request fetched under an earlier
        #: assignment is not given; the request is fetched again)
        self.generation = 0
        #: answers being retried right now (the broker did not take them)
        self.retrying = 0
        #: the worker's, to count dead letters (none outside a worker)
        self.metrics = metrics
        #: answers go out in record batches: those given while the last went out, together
        self._writes = RecordBatches("worker-answers")
        #: answers taken by ``respond`` the broker does not have yet, and once there are
        #: none; the tasks giving again those whose batch failed
        self._giving = 0
        self._all_given = asyncio.Event()
        self._all_given.set()
        self._again: set[asyncio.Task[None]] = set()
        self._consumer: AIOKafkaConsumer

    def attach(
        self,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        batch_limits: dict[str, int] | None = None,
    ) -> None:
        """``batch_limits``: the largest record batch each topic takes, where known."""
        self._consumer = consumer
        self._writes.attach(producer)
        self._writes.batch_limits = batch_limits or {}

    # Leadership and shutdown hooks: nothing to do here (see exactly_once.py).
    def settled(self) -> bool:
        """Whether fetched records may be dispatched (the positions they come from are
        right); always, here."""
        return True

    async def wait_settled(self) -> None:
        """Until ``settled()``."""

    def floor(self, tp: TopicPartition) -> int:
        """Records of ``tp`` below this offset are answered already: skip them."""
        return 0

    def unsettle(self) -> None:
        """A rebalance starts."""

    async def settle(self) -> None:
        """The assignment of a leading worker is final."""

    async def stand_by(self) -> None:
        """This worker stops dispatching for the group."""

    async def close(self) -> None:
        """The worker stops: what is not with the broker yet stays unanswered (its
        request is redelivered)."""
        for task in self._again:
            task.cancel()
        await asyncio.gather(*self._again, return_exceptions=True)
        await self._writes.close()

    def answered(self, request_id: str) -> bool:
        """Whether this worker answered ``request_id`` recently (a redelivery)."""
        return request_id in self._answered

    async def respond(self, pending: Pending, response: ResponseRecord) -> None:
        """Give ``response``: it joins the next record batch, and once the broker has it,
        it is retained and its request's offset completed (``_given``), with no task
        waiting for it. If the batch fails, it is given again on its own, with retries
        (``give_in_turn``); ``all_given`` waits for what is still on its way."""
        value = response.model_dump_json(exclude_none=True).encode()
        self._giving += 1
        self._all_given.clear()
        try:
            self._writes.add(
                self.topics.responses,
                pending.request_id.encode(),
                value,
                then=lambda error: self._given(pending, response, value, error),
            )
        except MessageSizeTooLargeError as exc:  # larger than a produce request may be
            self._given(pending, response, value, exc)

    def _given(
        self, pending: Pending, response: ResponseRecord, value: bytes, error: BaseException | None
    ) -> None:
        if error is None:
            self._done(pending, value)
        elif not isinstance(error, asyncio.CancelledError):  # (closing: redelivered)
            task = asyncio.create_task(
                self.give_in_turn(
                    pending, response, alone=isinstance(error, MessageSizeTooLargeError)
                )
            )
            self._again.add(task)
            task.add_done_callback(self._given_again)
            return
        self._one_less()

    def _given_again(self, task: asyncio.Task[None]) -> None:
        self._again.discard(task)
        self._one_less()
        if not task.cancelled() and task.exception() is not None:
            log.error("could not give an answer: %r", task.exception())

    def _one_less(self) -> None:
        self._giving -= 1
        if not self._giving:
            self._all_given.set()

    async def all_given(self) -> None:
        """Until every answer ``respond`` took is with the broker (or failed for good)."""
        await self._all_given.wait()

    async def give_in_turn(
        self, pending: Pending, response: ResponseRecord, *, alone: bool = False
    ) -> None:
        """Give ``response`` and wait until the broker has it, retrying as long as it
        takes; one larger than the broker takes is replaced by an error response that
        says so. ``alone``: in a record batch of its own from the first try."""
        key = pending.request_id.encode()
        value = response.model_dump_json(exclude_none=True).encode()
        try:
            await self.deliver(
                f"the response to {pending.request_id}",
                [(self.topics.responses, value, key)],
                origin=(pending.tp, pending.offset),
                about=_about(pending, self.worker_id),
                alone=alone,
            )
        except MessageSizeTooLargeError as exc:
            error = response.model_copy(
                update={
                    "status": "error",
                    "output": None,
                    "error": f"the response ({len(value)} bytes) is larger than the broker "
                    f"accepts ({exc}); raise the responses topic's max.message.bytes",
                }
            )
            value = error.model_dump_json(exclude_none=True).encode()
            await self.deliver(
                f"the error response to {pending.request_id}",
                [(self.topics.responses, value, key)],
                origin=(pending.tp, pending.offset),
            )
        self._done(pending, value)

    def _done(self, pending: Pending, value: bytes) -> None:
        """The broker has ``pending``'s answer."""
        self._retain(pending.request_id, value)
        self._remember(pending.request_id)
        self.completed(pending.tp, pending.offset)

    def _retain(self, request_id: str, value: bytes) -> None:
        """An answer the broker has: retained at once."""
        self.retained.add(request_id, value, now_ms())

    async def deliver(
        self,
        what: str,
        records: list[_Record],
        origin: tuple[TopicPartition, int],
        about: dict[str, str] | None = None,
        alone: bool = False,
    ) -> None:
        """Produce ``records`` (the answer to the request at ``origin``) and wait until the
        broker has them all, retrying with backoff as long as it takes; raises only
        ``MessageSizeTooLargeError`` (retrying cannot help). ``alone``: each in a record
        batch of its own from the first try (a batch too large fails every record in it)."""
        delay = RETRY_FIRST_S
        failures = 0
        try:
            while True:
                try:
                    await asyncio.gather(
                        *[self._writes.acked(t, k, v, alone=alone) for t, v, k in records]
                    )
                except MessageSizeTooLargeError:
                    if alone:
                        raise
                    alone = True  # the batch was too large; this record may not be
                    continue
                except KafkaError as exc:
                    self.retrying += failures == 0
                    failures += 1
                    log.warning("could not produce %s (%r); retrying in %.1f s", what, exc, delay,
                                extra=about)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                if failures:
                    log.warning("produced %s after %d failed attempts", what, failures, extra=about)
                return
        finally:
            self.retrying -= failures > 0

    async def dead_letter(
        self, tp: TopicPartition, record: ConsumerRecord, problem: Undecodable
    ) -> None:
        """The record to the DLQ, and an error response where its sender named an id."""
        log.warning(
            "%s[%d]@%d goes to the DLQ: %s", tp.topic, tp.partition, record.offset, problem.reason,
            extra=logs.about(problem.request_id, self.topics.priority_of(tp.topic).value,
                             worker=self.worker_id),
        )  # fmt: skip
        if self.metrics is not None:
            self.metrics.dead_letters.inc()
        value = record.value.decode(errors="replace") if record.value is not None else None
        if value is not None and len(value) > DLQ_VALUE_MAX_CHARS:
            value = value[:DLQ_VALUE_MAX_CHARS] + f"... ({len(value)} characters in all)"
        letter = DeadLetter(
            reason=problem.reason,
            topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key else None,
            value=value,
            request_id=problem.request_id,
            worker_id=self.worker_id,
            failed_at_ms=now_ms(),
        )
        records: list[_Record] = [
            (self.topics.dlq, letter.model_dump_json(exclude_none=True).encode(), record.key)
        ]
        if problem.request_id:
            error = responses.refused(
                problem.request_id,
                priority=self.topics.priority_of(tp.topic),
                worker_id=self.worker_id,
                reason=problem.reason,
                now=now_ms(),
            )
            key = problem.request_id.encode()
            records.append(
                (self.topics.responses, error.model_dump_json(exclude_none=True).encode(), key)
            )
        where = f"{tp.topic}[{tp.partition}]@{record.offset}"
        try:
            await self.deliver(f"the dead letter of {where}", records, origin=(tp, record.offset))
        except MessageSizeTooLargeError as exc:  # a key or request id near the size limit
            log.error("could not dead-letter %s, skipping it: %r", where, exc)
        self.completed(tp, record.offset)

    def forget(self, tps: set[TopicPartition]) -> None:
        """Partitions revoked: their offsets are the new owner's to commit."""
        self.offsets.forget(tps)

    def completed(self, tp: TopicPartition, offset: int) -> None:
        """``offset`` needs no more work: commit it once the prefix before it is done."""
        if self.offsets.complete(tp, offset):
            self._commit_wanted.set()

    def _remember(self, request_id: str) -> None:
        # Retained answers (with the record each answered) say it better, for a time.
        if self.settings.dedup_window and not self.retained.retention_ms:
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
                await asyncio.sleep(interval)
                continue
            await asyncio.sleep(self._pause_after_commit(interval))

    def _pause_after_commit(self, interval: float) -> float:
        """At most one commit per interval: under load one commit covers many answers."""
        return interval

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
