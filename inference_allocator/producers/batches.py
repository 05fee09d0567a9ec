"""Records produced in record batches: every record added while the previous batches are
on their way (or, with a linger, within it) goes out with one ``send_batch`` per partition.

aiokafka's ``send`` does, for every record, a metadata check, the partitioner, the
accumulator and a future; here a record is appended to its partition's ``BatchBuilder``
and the records of a batch share one future (the ack). Used for the worker's answers (no
linger: a lone answer goes out on the loop's next turn, answers given meanwhile join it)
and its slot-table records (a 20 ms linger, and a state that a later one of its slot
replaces is left out). Partitions are chosen by key by ``clients.crc32_partitioner``, the
producer's own partitioner.

A batch the broker finds too large fails every record in it; a caller retries a record
``alone`` to learn whether it is the one (``streams.answers``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from ..clients import crc32_partitioner

_Record = tuple[bytes | None, bytes | None]
_Waiting = tuple[list[_Record | None], asyncio.Future[None], dict[bytes | None, int]]
#: more than a record's header and the batch's take (the exact size is counted only above)
_OVERHEAD_BYTES = 1024


async def acknowledged(acks: Sequence[asyncio.Future[None]]) -> None:
    """Wait until every ack of ``acks`` is done (raising the first error). An ack is shared
    by the records of its batch: a cancelled wait here leaves it alone."""
    await asyncio.shield(acks[0] if len(acks) == 1 else asyncio.gather(*acks))


class RecordBatches:
    """Batches the records ``add``-ed; ``attach`` the producer before the first one."""

    def __init__(
        self,
        name: str,
        linger_s: float = 0.0,
        *,
        failed: Callable[[BaseException], None] | None = None,
        max_request_bytes: int = 1048576,  # aiokafka's default, which make_producer keeps
    ):
        self.name = name
        self.linger_s = linger_s
        #: called with the error of each batch the broker did not take
        self.failed = failed
        self.max_request_bytes = max_request_bytes
        self._producer: AIOKafkaProducer
        #: what waits for the next send, by partition: its records, their ack, and where
        #: the replaceable ones are (by key)
        self._waiting: dict[TopicPartition, _Waiting] = {}
        #: records that go out in a batch of their own, with their acks
        self._alone: list[tuple[TopicPartition, _Record, asyncio.Future[None]]] = []
        self._sending: asyncio.Task[None] | None = None
        #: by topic: its partition numbers, and the partition of each
        self._partitions: dict[str, tuple[list[int], dict[int, TopicPartition]]] = {}

    def attach(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        alone: bool = False,
        replaceable: bool = False,
    ) -> asyncio.Future[None]:
        """Queue one record; returns the ack of the batch it goes out in (done when the
        broker has it, or with the batch's error), shared by the batch's records: wait for
        it with ``acknowledged`` (cancelling a plain wait cancels the future waited for).

        ``alone``: in a batch of its own (a batch too large for the broker fails every
        record in it). ``replaceable``: left out if a later record with its key is added
        before it goes out (for a compacted topic, where only a key's last record stays).

        Raises ``MessageSizeTooLargeError`` at once for a record larger than a produce
        request may be, as ``send`` does."""
        if len(value or b"") + len(key or b"") > self.max_request_bytes - _OVERHEAD_BYTES:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
            if size > self.max_request_bytes:
                raise MessageSizeTooLargeError(
                    f"the record is {size} bytes, more than a produce request may be "
                    f"({self.max_request_bytes})"
                )
        numbers, partitions = self._partitions.get(topic) or await self._partitions_of(topic)
        tp = partitions[crc32_partitioner(key, numbers, numbers)]
        loop = asyncio.get_running_loop()
        if alone:
            ack: asyncio.Future[None] = loop.create_future()
            self._alone.append((tp, (key, value), ack))
        else:
            waiting = self._waiting.get(tp)
            if waiting is None:
                waiting = self._waiting[tp] = ([], loop.create_future(), {})
            records, ack, replaceable_at = waiting
            if replaceable_at:
                replaced = replaceable_at.pop(key, None)
                if replaced is not None:
                    records[replaced] = None
            if replaceable:
                replaceable_at[key] = len(records)
            records.append((key, value))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send_batches(), name=self.name)
        return ack

    async def _partitions_of(self, topic: str) -> tuple[list[int], dict[int, TopicPartition]]:
        known = self._producer.client.cluster.partitions_for_topic(topic)
        numbers = sorted(known or await self._producer.partitions_for(topic))
        self._partitions[topic] = numbers, {n: TopicPartition(topic, n) for n in numbers}
        return self._partitions[topic]

    async def _send_batches(self) -> None:
        """Send what waits (after the linger), wait for the acks, until nothing waits."""
        while self._waiting or self._alone:
            # Records added in this turn of the loop join them (and, with a linger, those
            # of the linger).
            await asyncio.sleep(self.linger_s)
            waiting, self._waiting = self._waiting, {}
            alone, self._alone = self._alone, []
            self._partitions.clear()  # looked up again, once per topic and batch
            cycle = [(tp, records, ack) for tp, (records, ack, _) in waiting.items()]
            cycle += [(tp, [record], ack) for tp, record, ack in alone]
            try:
                sent = [(ack, await self._send(tp, records, ack)) for tp, records, ack in cycle]
                for ack, acks in sent:
                    if not acks:
                        continue  # failed already
                    try:
                        # One partition's batches are written in order: the last ack is last.
                        await acks[-1]
                    except Exception as exc:  # a KafkaError, or the producer closed under it
                        self._fail(ack, exc)
                        continue
                    if not ack.done():
                        ack.set_result(None)
            finally:
                for _, _, ack in cycle:  # cancelled (closing): nobody will set them
                    ack.cancel()

    async def _send(
        self, tp: TopicPartition, records: list[_Record | None], ack: asyncio.Future[None]
    ) -> list[asyncio.Future[object]]:
        """``records`` (but those replaced) handed to the producer in as few batches as
        they fit in; their acks (none, and ``ack`` failed, when the producer refuses them)."""
        batches = [self._producer.create_batch()]
        for record in records:
            if record is None:
                continue
            key, value = record
            if batches[-1].append(key=key, value=value, timestamp=None) is None:
                batches.append(self._producer.create_batch())  # that one is full
                batches[-1].append(key=key, value=value, timestamp=None)
        try:
            return [
                await self._producer.send_batch(batch, tp.topic, partition=tp.partition)
                for batch in batches
            ]
        except Exception as exc:
            self._fail(ack, exc)
            return []

    def _fail(self, ack: asyncio.Future[None], exc: BaseException) -> None:
        if not ack.done():
            ack.set_exception(exc)
            # Retrieved here: a caller may not wait for its ack (the slot table's do not).
            ack.exception()
        if self.failed is not None:
            self.failed(exc)

    async def close(self) -> None:
        """Stop sending; the acks of what did not go out are cancelled."""
        if self._sending is not None:
            self._sending.cancel()
            await asyncio.gather(self._sending, return_exceptions=True)
        for _, ack, _ in self._waiting.values():
            ack.cancel()
        for _, _, ack in self._alone:
            ack.cancel()
        self._waiting, self._alone = {}, []
