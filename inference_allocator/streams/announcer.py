"""The worker's side of the slot table: every lease, release and state change written to
the compacted ``<prefix>.gpu-slots``, renewed by a heartbeat, withdrawn when it stops.

Writes get a producer of their own (one produce request in flight per connection: an
answer must not queue behind a lease record) and go out in batches: the records of
``LINGER_MS`` are appended to one record batch sent with one ``send_batch`` (aiokafka's
``send`` per record cost the worker more than a tenth of its CPU per request); nobody waits
on them. A write that fails makes the heartbeat rewrite every slot at once, with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from ..config import Settings
from ..schemas import SlotRecord
from ..topics import Topics
from .answers import RETRY_FIRST_S, RETRY_MAX_S
from .leadership import Membership
from .slots import SlotTable

log = logging.getLogger("inference_allocator.streams.worker")

#: how long slot records wait to be batched
LINGER_MS = 20

_Record = tuple[bytes, bytes | None]


class SlotAnnouncer:
    def __init__(
        self, settings: Settings, topics: Topics, slots: SlotTable, membership: Membership
    ):
        self.settings = settings
        self.topics = topics
        self.slots = slots
        self.membership = membership
        self._failed = asyncio.Event()
        self._producer: AIOKafkaProducer
        #: records waiting for the next batch, and the future of that batch's ack
        self._waiting: list[_Record] = []
        self._ack: asyncio.Future[object] | None = None
        self._sending: asyncio.Task[None] | None = None

    def attach(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def publish(self, record: SlotRecord) -> asyncio.Future[object]:
        """Write a slot's state to the slot table; returns the ack of the batch it goes
        out in (callers may ignore it)."""
        value = record.model_dump_json(exclude_none=True).encode()
        return self._add(record.slot_id.encode(), value)

    def _add(self, key: bytes, value: bytes | None) -> asyncio.Future[object]:
        self._waiting.append((key, value))
        if self._ack is None:
            self._ack = asyncio.get_running_loop().create_future()
            self._ack.add_done_callback(self._written)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send_batches(), name="worker-slot-writes")
        return self._ack

    async def _send_batches(self) -> None:
        """Send what waits, ``LINGER_MS`` after the first record, until nothing does."""
        while self._waiting:
            await asyncio.sleep(LINGER_MS / 1000)
            records, self._waiting = self._waiting, []
            ack, self._ack = self._ack, None
            assert ack is not None
            try:
                acks = [
                    await self._producer.send_batch(batch, self.topics.gpu_slots, partition=0)
                    for batch in self._batches(records)
                ]
                # The slot table has one partition: the last batch's ack is the last.
                result = await acks[-1]
            except Exception as exc:  # a KafkaError, or the producer closed under it
                if not ack.done():
                    ack.set_exception(exc)
                continue
            if not ack.done():
                ack.set_result(result)

    def _batches(self, records: list[_Record]) -> list[BatchBuilder]:
        """``records`` in as few record batches as they fit in."""
        batches = [self._producer.create_batch()]
        for key, value in records:
            if batches[-1].append(key=key, value=value, timestamp=None) is None:
                batches.append(self._producer.create_batch())  # that one is full
                batches[-1].append(key=key, value=value, timestamp=None)
        return batches

    async def publish_all(self) -> None:
        """Every slot's state, acknowledged."""
        await asyncio.gather(*[await self.publish(r) for r in self.slots.snapshot()])

    async def close(self) -> None:
        """Stop sending (what did not go out is lost with the worker's slots anyway)."""
        if self._sending is not None:
            self._sending.cancel()
            await asyncio.gather(self._sending, return_exceptions=True)

    def _written(self, ack: asyncio.Future[object]) -> None:
        if not ack.cancelled() and ack.exception() is not None:
            log.error("could not write to the slot table (will rewrite it): %r", ack.exception())
            self._failed.set()  # the heartbeat rewrites every slot

    async def withdraw(self) -> list[asyncio.Future[object]]:
        """Tombstones: this worker's slots leave the compacted slot table; their acks."""
        return [self._add(record.slot_id.encode(), None) for record in self.slots.snapshot()]

    async def heartbeat(self) -> None:
        """Renew every slot's expiry well within the TTL, so readers see this worker alive;
        after a slot-table write failed, rewrite every slot's state (with backoff) at once."""
        backoff = RETRY_FIRST_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._failed.wait(), self.settings.lease_ttl_seconds / 3)
            if self._failed.is_set():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)
                log.warning("rewriting the slot table after a failed write")
            else:
                backoff = RETRY_FIRST_S
            self._failed.clear()
            if self.membership.leading:
                for record in self.slots.snapshot():
                    await self.publish(record)
