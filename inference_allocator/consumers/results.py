"""Retained results: every answer on the responses topic, by request id, for a while.

``GET /api/v1/inference/{id}``, an idempotent retry and a duplicate request record are
answered from here without running anything again. It is read from Kafka: a bridge or a
worker that starts reads back the retention window of ``<prefix>.responses`` before it
serves, so a restart still finds what was answered before it.

Values stay the raw bytes of the record (decoded only when asked for), so following every
answer costs one dict entry each; the first answer to an id wins, as for a waiting caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from ..clients import answers_isolation, assigned_consumer, broker_traits
from ..config import Settings
from ..errors import BrokerError
from ..pacing import FetchPace
from ..schemas import ResponseRecord, now_ms
from ..topics import Topics

log = logging.getLogger(__name__)

#: how long a start-up may take to read back the retained answers
REPLAY_TIMEOUT_S = 60.0
#: a worker's follower of the answers fetches once this much waits (or its wait is over)
FOLLOW_MIN_BYTES = 256 * 1024
_EVICT_EVERY = 1024


class RetainedResults:
    """Answers by request id, dropped ``retention_ms`` after they were produced."""

    def __init__(self, retention_ms: int):
        self.retention_ms = retention_ms
        # Insertion order is (nearly) production order: eviction pops from the front.
        self._by_id: dict[str, tuple[int, bytes]] = {}
        self._added = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, request_id: str) -> bool:
        return self.get_raw(request_id) is not None

    def add(self, request_id: str, value: bytes | None, timestamp_ms: int) -> None:
        """Keep an answer (the first one to an id; later ones change nothing)."""
        if not self.retention_ms or value is None or request_id in self._by_id:
            return
        if timestamp_ms < now_ms() - self.retention_ms:
            return  # read back from before the window
        self._by_id[request_id] = (timestamp_ms, value)
        self._added += 1
        if self._added % _EVICT_EVERY == 0:
            self.evict()

    def newest(self, count: int) -> list[bytes]:
        """The last ``count`` answers kept, newest first."""
        found = []
        for _, value in reversed(self._by_id.values()):
            if len(found) == count:
                break
            found.append(value)
        return found

    def get_raw(self, request_id: str) -> bytes | None:
        found = self._by_id.get(request_id)
        if found is None or found[0] < now_ms() - self.retention_ms:
            return None
        return found[1]

    def get(self, request_id: str) -> ResponseRecord | None:
        """The retained answer to ``request_id``, or None (never answered, or too long ago)."""
        raw = self.get_raw(request_id)
        if raw is None:
            return None
        try:
            return ResponseRecord.model_validate_json(raw)
        except ValidationError:
            return None  # a malformed record keyed by this id: nothing to answer from

    def evict(self) -> int:
        """Drop what is past the retention; returns how many."""
        oldest = now_ms() - self.retention_ms
        dropped = 0
        while self._by_id:
            request_id, (timestamp, _) = next(iter(self._by_id.items()))
            if timestamp >= oldest:
                break
            del self._by_id[request_id]
            dropped += 1
        return dropped

    def add_records(self, records: list) -> None:
        """Keep every record of a fetch (``ConsumerRecord``s of the responses topic)."""
        for record in records:
            if record.key:
                self.add(record.key.decode(errors="replace"), record.value, record.timestamp)


async def seek_to_retained(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], settings: Settings
) -> None:
    """Position ``consumer`` on the first answer of the retention window of each partition."""
    await seek_since(consumer, tps, settings, settings.result_retention_seconds)


async def seek_since(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], settings: Settings, seconds: float
) -> None:
    """Position ``consumer`` on the first record of the last ``seconds`` of each partition
    (0: the end).

    Kafka finds it by timestamp (ListOffsets); Tansu's timestamp lookups are wrong, so there
    the partitions are read from their start: skip older records as they come.
    """
    if seconds <= 0:
        await consumer.seek_to_end(*tps)
        return
    if not (await broker_traits(settings)).kafka_like:
        await consumer.seek_to_beginning(*tps)
        return
    found = await consumer.offsets_for_times({tp: now_ms() - int(seconds * 1000) for tp in tps})
    ends = await consumer.end_offsets(tps)
    for tp in tps:
        at = found.get(tp)
        consumer.seek(tp, at.offset if at is not None else ends[tp])


async def caught_up(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    """Whether ``consumer`` has read every partition up to the end its last fetch saw."""
    for tp in tps:
        high = consumer.highwater(tp)
        if high is None or await consumer.position(tp) < high:
            return False
    return True


async def wait_caught_up(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], what: str, settings: Settings
) -> float:
    """Wait until the reading task of ``consumer`` has caught up; returns the seconds it took."""
    started_at = time.monotonic()
    while not await caught_up(consumer, tps):
        if time.monotonic() - started_at > REPLAY_TIMEOUT_S:
            raise BrokerError(
                f"could not read back {what} of {settings.bootstrap_servers} within "
                f"{REPLAY_TIMEOUT_S:.0f} s (INFERENCE_RESULT_RETENTION_SECONDS="
                f"{settings.result_retention_seconds:g})"
            )
        await asyncio.sleep(0.02)
    return time.monotonic() - started_at


class ResultFollower:
    """A worker's view of every answer in the retention window (its own and others')."""

    def __init__(
        self,
        settings: Settings,
        results: RetainedResults | None = None,
        on_answers: Callable[[list[ConsumerRecord]], None] | None = None,
    ):
        self.settings = settings
        self.on_answers = on_answers  # told of every batch of answers read
        self.topics = Topics.from_settings(settings)
        if results is None:
            results = RetainedResults(int(settings.result_retention_seconds * 1000))
        self.results = results
        self._consumer: AIOKafkaConsumer
        self._tps: list[TopicPartition] = []

    async def start(self, stack: contextlib.AsyncExitStack, pace: FetchPace) -> None:
        """Position the reader on the retention window (read by ``run``), at the worker's
        ``pace``; ``stack`` stops it."""
        self._consumer, self._tps = await assigned_consumer(
            self.settings,
            self.topics.responses,
            stack,
            isolation_level=answers_isolation(self.settings),
            # Off the latency path (a worker knows its own answers at once): no 2 ms polls
            # of Tansu for it, and under load one fetch per wait or per FOLLOW_MIN_BYTES
            # of answers, not one per batch of answers.
            fetch_max_wait_ms=self.settings.status_refresh_ms,
            fetch_min_bytes=FOLLOW_MIN_BYTES,
        )
        await seek_to_retained(self._consumer, self._tps, self.settings)
        pace.follow(self._consumer, status=True)

    async def caught_up(self) -> float:
        """Once ``run`` has read back the retention window; the seconds it took."""
        seconds = await wait_caught_up(
            self._consumer, self._tps, "the retained answers", self.settings
        )
        log.info("read back %d retained answers in %.2f s", len(self.results), seconds)
        return seconds

    async def run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                self.results.add_records(records)
                if self.on_answers is not None:
                    self.on_answers(records)
