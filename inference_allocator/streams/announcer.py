"""The worker's side of the slot table: every lease, release and state change written to
the compacted ``<prefix>.gpu-slots``, renewed by a heartbeat, withdrawn when it stops.

Writes get a producer of their own (one produce request in flight per connection: an
answer must not queue behind a lease record) and go out in batches: the records of
``LINGER_MS`` are appended to one record batch sent with one ``send_batch``
(``producers.batches``; aiokafka's ``send`` per record cost the worker more than a tenth of
its CPU per request); nobody waits on them. A write that fails makes the heartbeat rewrite
every slot at once, with backoff. A slot's free (or down) state that a later state of the
same slot follows within the batch is left out (the table is compacted: a reader loses
only a state shorter than the batch), but every lease is written: a lease record is the
evidence that a request ran, and where.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer

from ..config import Settings
from ..producers.batches import RecordBatches
from ..topics import Topics
from .answers import RETRY_FIRST_S, RETRY_MAX_S
from .leadership import Membership
from .slots import SlotState, SlotTable

log = logging.getLogger("inference_allocator.streams.worker")

#: how long slot records wait to be batched
LINGER_MS = 20
#: the largest record batch of slot records (a produce request carries one per partition)
BATCH_BYTES = 256 * 1024


class SlotAnnouncer:
    def __init__(
        self, settings: Settings, topics: Topics, slots: SlotTable, membership: Membership
    ):
        self.settings = settings
        self.topics = topics
        self.slots = slots
        self.membership = membership
        self._failed = asyncio.Event()
        self._writes = RecordBatches("worker-slot-writes", LINGER_MS / 1000, failed=self._written)

    def attach(self, producer: AIOKafkaProducer) -> None:
        self._writes.attach(producer)

    def publish(self, slot: SlotState) -> None:
        """Write a slot's state to the slot table (a failed write is logged, and the
        heartbeat rewrites every slot)."""
        self._writes.add(
            self.topics.gpu_slots,
            slot.slot_id.encode(),
            slot.value,
            replaceable=slot.state != "leased",
        )

    async def publish_all(self) -> None:
        """Every slot's state, acknowledged."""
        topic = self.topics.gpu_slots
        await asyncio.gather(
            *(
                self._writes.acked(
                    topic, r.slot_id.encode(), r.value, replaceable=r.state != "leased"
                )
                for r in self.slots.snapshot()
            )
        )

    async def close(self) -> None:
        """Stop sending (what did not go out is lost with the worker's slots anyway)."""
        await self._writes.close()

    def _written(self, exc: BaseException) -> None:
        log.error("could not write to the slot table (will rewrite it): %r", exc)
        self._failed.set()  # the heartbeat rewrites every slot

    async def withdraw(self) -> list[asyncio.Future[None]]:
        """Tombstones: this worker's slots leave the compacted slot table; their acks."""
        topic = self.topics.gpu_slots
        return [self._writes.acked(topic, r.slot_id.encode(), None) for r in self.slots.snapshot()]

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
                    self.publish(record)
