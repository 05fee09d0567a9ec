"""The worker's side of the slot table: every lease, release and state change written to
the compacted ``<prefix>.gpu-slots``, renewed by a heartbeat, withdrawn when it stops.

Writes get a producer of their own (one produce request in flight per connection: an
answer must not queue behind a lease record) and linger to go out in batches; nobody
waits on them. A write that fails makes the heartbeat rewrite every slot at once, with
backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer

from ..config import Settings
from ..schemas import SlotRecord
from ..topics import Topics
from .answers import RETRY_FIRST_S, RETRY_MAX_S
from .leadership import Membership
from .slots import SlotTable

log = logging.getLogger("inference_allocator.streams.worker")

#: how long slot records wait to be batched
LINGER_MS = 20


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

    def attach(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def publish(self, record: SlotRecord) -> asyncio.Future[object]:
        """Write a slot's state to the slot table; returns the ack (callers may ignore it)."""
        ack = await self._producer.send(
            self.topics.gpu_slots,
            record.model_dump_json(exclude_none=True).encode(),
            key=record.slot_id.encode(),
            partition=0,  # the slot table has one partition: skip the partitioner
        )
        ack.add_done_callback(self._written)
        return ack

    async def publish_all(self) -> None:
        """Every slot's state, acknowledged."""
        await asyncio.gather(*[await self.publish(r) for r in self.slots.snapshot()])

    def _written(self, ack: asyncio.Future[object]) -> None:
        if not ack.cancelled() and ack.exception() is not None:
            log.error("could not write to the slot table (will rewrite it): %r", ack.exception())
            self._failed.set()  # the heartbeat rewrites every slot

    async def withdraw(self) -> list[asyncio.Future[object]]:
        """Tombstones: this worker's slots leave the compacted slot table; their acks."""
        return [
            await self._producer.send(
                self.topics.gpu_slots, None, key=record.slot_id.encode(), partition=0
            )
            for record in self.slots.snapshot()
        ]

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
