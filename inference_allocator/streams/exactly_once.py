"""Exactly-once answers (``INFERENCE_EXACTLY_ONCE``, Apache Kafka, leader mode).

The leader answers through one Kafka transaction at a time: the responses and dead letters
produced since the last one, and the worker group's offsets of the answered prefix, commit
together or not at all. A worker that dies mid-transaction leaves it to be aborted; its
requests are redelivered and answered again, and a ``read_committed`` consumer (every
bridge, in this mode) sees exactly one answer per request.

The transactional id is the group's (``<group>.answers``), taken by whichever worker leads:
a new leader's producer fences the previous one, so a leader paused past its session
(SIGSTOP, a VM pause) and resumed cannot commit a stale transaction. Standbys hold no
transactional producer. Shared mode would need per-partition fencing (KIP-447's group
metadata, which aiokafka does not send), so it is refused.

Cost: an answer becomes visible when its transaction commits; transactions run back to
back, so it waits for the one in flight and its own (five broker round trips each), and
for any slower request before it on its partition (its cost is in BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, ProducerFenced

from ..clients import make_producer
from ..schemas import ResponseRecord
from .answers import Answers, _Record
from .waiting import Pending

log = logging.getLogger(__name__)

# aiokafka's max_request_size; a larger answer is replaced by an error response that says so
_MAX_RECORD_BYTES = 1024 * 1024 - 1024


class TransactionalAnswers(Answers):
    """``Answers`` whose produce and commit are one transaction per commit interval."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._leading = False
        self._settled = asyncio.Event()
        self._floors: dict[TopicPartition, int] = {}
        self._txn: AIOKafkaProducer | None = None
        # answers not yet in a committed transaction, with the request offset each answers
        self._buffer: list[tuple[TopicPartition, int, list[_Record]]] = []
        self._lock = asyncio.Lock()

    @property
    def transactional_id(self) -> str:
        return f"{self.settings.consumer_group}.answers"

    def settled(self) -> bool:
        return self._settled.is_set()

    async def wait_settled(self) -> None:
        await self._settled.wait()

    def unsettle(self) -> None:
        self._settled.clear()
        self.generation += 1

    async def respond(self, pending: Pending, response: ResponseRecord) -> None:
        if pending.generation != self.generation:
            # Fetched before a rebalance: its offset was forgotten and is fetched (and run)
            # again; giving this answer too would answer it twice.
            log.info("dropping the answer to %s, fetched before the last rebalance",
                     pending.request_id)  # fmt: skip
            return
        # Held for the transaction (``deliver``), never in the batches of ``respond``.
        await self.give_in_turn(pending, response)

    def forget(self, tps: set[TopicPartition]) -> None:
        # Answers still held for revoked partitions are not given: their requests are
        # fetched (and run) again by whoever owns the partitions now, maybe this worker.
        super().forget(tps)
        self._buffer = [entry for entry in self._buffer if entry[0] not in tps]

    def floor(self, tp: TopicPartition) -> int:
        return self._floors.get(tp, 0)

    async def settle(self) -> None:
        """Take the transactional id, then read the committed offsets again: records below
        them are skipped (``floor``), and fetched records wait until then (``settled``).

        aiokafka reads committed offsets concurrently with the assignment callback and
        does not ask for stable ones (KIP-447): it may read them while the markers of the
        last committed transaction (the previous leader's, or this worker's own, committed
        as the rebalance began) are still being written, and start a partition before a
        request that was answered there. Starting the producer fences the previous one and
        returns only once its transactions are complete, so the offsets read after it are
        stable. (Seeking back instead left aiokafka fetching nothing, measured.)"""
        async with self._lock:
            await self._close_txn()
            self._leading = True
            try:
                await self._producer_for_transactions()
            except KafkaError as exc:  # the first transaction will try again
                log.warning("could not start the transactional producer yet: %r", exc)
        partitions = list(self._consumer.assignment())
        committed = await self._consumer._coordinator.fetch_committed_offsets(partitions)
        self._floors = {
            tp: max(meta.offset, 0) for tp, meta in committed.items() if tp in partitions
        }
        self._settled.set()

    async def stand_by(self) -> None:
        """Give up the transactional id; what is not committed is the new leader's to redo."""
        async with self._lock:
            self._leading = False
            if self._buffer:
                log.info("standing by: %d uncommitted answers left to the new leader",
                         len(self._buffer))  # fmt: skip
            self._buffer.clear()
            await self._close_txn()

    async def close(self) -> None:
        await self._close_txn()

    async def _producer_for_transactions(self) -> AIOKafkaProducer:
        if self._txn is None:
            producer = await make_producer(
                self.settings, transactional_id=self.transactional_id, enable_idempotence=True
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._txn = producer
            log.info("answering in transactions as %s", self.transactional_id)
        return self._txn

    async def _close_txn(self) -> None:
        producer, self._txn = self._txn, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 2)
            except (KafkaError, TimeoutError) as exc:
                log.warning("closing the transactional producer: %r", exc)

    def _pause_after_commit(self, interval: float) -> float:
        """None: transactions back to back while answers come, so an answer waits for the
        one in flight and its own, not for a commit interval (waiting for it put the whole
        interval into one client's latency); under load each transaction carries many
        answers.
        After a failed one, the interval still passes before the next."""
        return 0.0

    def _retain(self, request_id: str, value: bytes) -> None:
        # Held, not given: it is retained once its transaction commits and the worker's
        # read_committed follower of the responses reads it back.
        pass

    def answered(self, request_id: str) -> bool:
        # An answer is not given until its transaction commits, and a held one is dropped
        # with its partition on a rebalance: only the committed offsets say what is done.
        return False

    async def deliver(
        self,
        what: str,
        records: list[_Record],
        origin: tuple[TopicPartition, int],
        about: dict[str, str] | None = None,
        alone: bool = False,
    ) -> None:
        """Held for the transaction that commits ``origin``'s offset: an answer becomes
        visible only with the offset that says it was given."""
        for _, value, key in records:
            size = len(value or b"") + len(key or b"")
            if size > _MAX_RECORD_BYTES:  # would abort every transaction it is in
                raise MessageSizeTooLargeError(f"{size} bytes > {_MAX_RECORD_BYTES}")
        tp, offset = origin
        self._buffer.append((tp, offset, records))

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """One transaction: every buffered answer and the offsets of the answered prefix."""
        async with self._lock:
            if not self._leading:
                if self._buffer:
                    log.warning("not leading: dropping %d uncommitted answers (redelivered "
                                "to the leader)", len(self._buffer))  # fmt: skip
                    self._buffer.clear()
                return
            # Taken together, with no await between. An answer goes out only with its offset:
            # one completed beyond a gap (an earlier request of its partition still runs)
            # waits, or a crash would commit its answer but not its offset, and the next
            # leader would answer it again. Answers of partitions no longer ours are the
            # new owner's to give.
            assignment = self._consumer.assignment()
            batch: list[tuple[TopicPartition, int, list[_Record]]] = []
            held: list[tuple[TopicPartition, int, list[_Record]]] = []
            for entry in self._buffer:
                tp, offset, _ = entry
                if tp not in assignment:
                    continue
                position = self.offsets.position(tp)
                (batch if position is not None and offset < position else held).append(entry)
            self._buffer = held
            positions = {
                tp: pos for tp, pos in self.offsets.committable().items() if tp in assignment
            }
            if held:
                log.debug("%d answers held behind a running request of their partition "
                          "(positions %s)", len(held), positions)  # fmt: skip
            if not batch and not positions:
                return
            try:
                producer = await self._producer_for_transactions()
                async with producer.transaction():
                    for _, _, records in batch:
                        for topic, value, key in records:
                            await producer.send(topic, value, key=key)
                    if positions:
                        await producer.send_offsets_to_transaction(
                            positions, self.settings.consumer_group
                        )
            except ProducerFenced:
                log.warning("another worker took over the answers' transactional id; dropping "
                            "%d answers it will redo", len(batch))  # fmt: skip
                self._leading = False
                await self._close_txn()
                return
            except KafkaError as exc:
                # Aborted, or unknown: answer again in the next transaction, from a fresh
                # producer (its start aborts whatever this one left open).
                self._buffer[:0] = batch
                log.warning("transaction failed, retrying with the next one: %r", exc)
                await self._close_txn()
                self._commit_wanted.set()
                raise
            self.offsets.committed(positions)
