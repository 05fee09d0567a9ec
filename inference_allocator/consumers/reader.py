"""One consumer that follows the cluster for a bridge, a client or the status command.

It reads every partition of the responses topic from the end (assigned, never a group
member, so any number of bridges can run), and optionally the slot table from the beginning
and the request topics' high watermarks, for the status numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from ..clients import make_consumer, started
from ..config import Settings
from ..errors import BrokerError
from ..schemas import ResponseRecord, SlotRecord, SystemStatus
from ..topics import Topics, ensure_topics
from .correlator import ResponseCorrelator
from .views import BacklogView, SlotTableView, system_status

log = logging.getLogger(__name__)

_SYNC_TIMEOUT_S = 15.0


class ClusterReader:
    """Follows responses (always) and, with ``state=True``, the slot table and backlog."""

    def __init__(self, settings: Settings, *, state: bool = True):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.state = state
        self.correlator = ResponseCorrelator()
        self.slot_view = SlotTableView()
        self.backlog = BacklogView(self.topics)
        self._consumer: AIOKafkaConsumer
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._request_tps: list[TopicPartition] = []
        self._slot_tps: list[TopicPartition] = []

    async def start(self) -> None:
        await ensure_topics(self.settings)
        # The worker group's id lets us read its committed offsets; we never join or commit.
        self._consumer = make_consumer(
            self.settings, group_id=self.settings.consumer_group if self.state else None
        )
        await self._stack.enter_async_context(started(self._consumer, self.settings))
        consumer = self._consumer
        await consumer.topics()  # refresh metadata
        response_tps = self._partitions(self.topics.responses)
        assigned = list(response_tps)
        if self.state:
            self._request_tps = [
                tp for topic in self.topics.requests for tp in self._partitions(topic)
            ]
            self._slot_tps = self._partitions(self.topics.gpu_slots)
            assigned += self._request_tps + self._slot_tps
        consumer.assign(assigned)
        await consumer.seek_to_end(*response_tps, *self._request_tps)
        if self._slot_tps:
            await consumer.seek_to_beginning(*self._slot_tps)
            self.backlog.log_start.update(await consumer.beginning_offsets(self._request_tps))
        self._tasks.append(asyncio.create_task(self._read_loop(), name="reader"))
        if self.state:
            await self._refresh()
            self._tasks.append(asyncio.create_task(self._refresh_loop(), name="reader-refresh"))
            await self._wait_synced()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.correlator.fail_all(BrokerError("the response reader stopped"))
        await self._stack.aclose()

    async def __aenter__(self) -> ClusterReader:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def status(self) -> SystemStatus:
        return system_status(self.slot_view, self.backlog)

    def note_produced(self, tp: TopicPartition, offset: int) -> None:
        """Count a request we produced at once, before the next fetch reports it."""
        if self.backlog.highwater.get(tp, 0) <= offset:
            self.backlog.highwater[tp] = offset + 1

    def _partitions(self, topic: str) -> list[TopicPartition]:
        partitions = self._consumer.partitions_for_topic(topic)
        if not partitions:
            raise BrokerError(
                f"topic {topic!r} does not exist on {self.settings.bootstrap_servers}"
            )
        return [TopicPartition(topic, p) for p in sorted(partitions)]

    async def _read_loop(self) -> None:
        responses, slots = self.topics.responses, self.topics.gpu_slots
        correlator = self.correlator
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                if tp.topic == responses:
                    for record in records:
                        # Decode only what somebody here waits for: every bridge reads all.
                        key = record.key.decode(errors="replace") if record.key else None
                        if key is not None and correlator.awaits(key):
                            self._resolve(record.value)
                elif tp.topic == slots:
                    for record in records:
                        self._apply_slot(record.key, record.value)
                # Request records are only read for the high watermark fetches carry.

    def _resolve(self, value: bytes | None) -> None:
        try:
            self.correlator.resolve(ResponseRecord.model_validate_json(value or b""))
        except ValidationError as exc:
            log.warning("ignoring a malformed response: %s", exc.errors()[0]["msg"])

    def _apply_slot(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self.slot_view.apply(key.decode(errors="replace"), None)
            return
        try:
            record = SlotRecord.model_validate_json(value)
        except ValidationError:
            log.warning("ignoring a malformed slot record under key %r", key)
            return
        self.slot_view.apply(record.slot_id, record)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_refresh_ms / 1000)
            try:
                await self._refresh()
            except KafkaError as exc:
                log.warning("could not refresh the backlog: %s", exc)

    async def _refresh(self) -> None:
        consumer = self._consumer
        for tp in self._request_tps:
            high = consumer.highwater(tp)
            if high is not None:
                self.note_produced(tp, high - 1)
        committed = await asyncio.gather(*(consumer.committed(tp) for tp in self._request_tps))
        for tp, offset in zip(self._request_tps, committed, strict=True):
            if offset is not None:
                self.backlog.committed[tp] = offset

    async def _wait_synced(self) -> None:
        """Wait until the slot table is read up to its end and every backlog is known."""
        deadline = time.monotonic() + _SYNC_TIMEOUT_S
        consumer = self._consumer
        while time.monotonic() < deadline:
            highs = {tp: consumer.highwater(tp) for tp in self._slot_tps + self._request_tps}
            if all(h is not None for h in highs.values()):
                positions = [await consumer.position(tp) for tp in self._slot_tps]
                if all(p >= highs[tp] for p, tp in zip(positions, self._slot_tps, strict=True)):
                    await self._refresh()
                    return
            await asyncio.sleep(0.02)
        raise BrokerError(
            f"could not read the slot table of {self.settings.bootstrap_servers} within "
            f"{_SYNC_TIMEOUT_S:.0f} s"
        )
