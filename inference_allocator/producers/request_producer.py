"""The Python API for putting requests on the priority topics."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from ..clients import make_producer, retrieve_outcome, started, unreachable
from ..config import Settings
from ..schemas import FINGERPRINT_HEADER, CancelRecord, Priority, RequestRecord, now_ms
from ..topics import Topics, ensure_topics


@dataclass(frozen=True, slots=True)
class Submitted:
    """A request the broker has acknowledged, and where it landed."""

    request: RequestRecord
    tp: TopicPartition
    offset: int


class RequestProducer:
    """Produces requests keyed by ``request_id`` onto ``<prefix>.requests.<priority>``.

    Every request carries ``submitted_at_ms`` and a ``deadline_ms`` (the submit time plus
    ``timeout_seconds``, by default ``INFERENCE_REQUEST_TIMEOUT_SECONDS``): a worker never
    starts a request past its deadline.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self._producer: AIOKafkaProducer
        self._stack = contextlib.AsyncExitStack()
        self._partitions: dict[str, list[int]] = {}  # of each request topic

    async def start(self) -> None:
        # Brokers that auto-create topics on first use would give them default partitions.
        await ensure_topics(self.settings)
        self._producer = await make_producer(self.settings)  # needs the running event loop
        await self._stack.enter_async_context(started(self._producer, self.settings))

    async def stop(self) -> None:
        await self._stack.aclose()

    async def __aenter__(self) -> RequestProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def build(
        self,
        model_id: str,
        prompt: str,
        priority: Priority | str = Priority.MEDIUM,
        *,
        request_id: str | None = None,
        timeout_seconds: float | None = None,
        params: dict[str, Any] | None = None,
        tenant: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        api: Literal["chat", "completions"] | None = None,
        stream: bool = False,
        fingerprint: str | None = None,
        session: str | None = None,
    ) -> RequestRecord:
        submitted = now_ms()
        timeout = timeout_seconds
        if timeout is None:
            timeout = self.settings.request_timeout_seconds
        return RequestRecord(
            request_id=request_id or uuid.uuid4().hex,
            model_id=model_id,
            prompt=prompt,
            priority=Priority(priority),
            submitted_at_ms=submitted,
            deadline_ms=submitted + int(timeout * 1000),
            params=params or None,
            tenant=tenant,
            messages=messages,
            api=api,
            stream=stream or None,
            fingerprint=fingerprint,
            session=session,
        )

    async def send(
        self, request: RequestRecord, *, abort: asyncio.Future[None] | None = None
    ) -> Submitted:
        """Produce one request and wait for the broker's acknowledgement."""
        [submitted] = await self.send_many([request], abort=abort)
        return submitted

    async def send_many(
        self, requests: list[RequestRecord], *, abort: asyncio.Future[None] | None = None
    ) -> list[Submitted]:
        """Produce requests in order, batched, and wait until the broker has them all.

        ``abort`` done first (the broker stopped answering) raises ``BrokerUnavailable``
        at once rather than after the produce timeout; the requests may still land.
        """
        try:
            acks = []
            for request in requests:
                assert request.request_id and request.priority
                topic = self.topics.request(request.priority)
                acks.append(
                    await self._producer.send(
                        topic,
                        request.model_dump_json(exclude_none=True).encode(),
                        key=request.request_id.encode(),
                        partition=await self._partition(topic, request.tenant),
                        # Readers of keys only (a bridge's queued view) see it here.
                        headers=(
                            [(FINGERPRINT_HEADER, request.fingerprint.encode())]
                            if request.fingerprint
                            else None
                        ),
                    )
                )
            gathered = asyncio.gather(*acks)
            if abort is not None and not gathered.done():
                await asyncio.wait((gathered, abort), return_when=asyncio.FIRST_COMPLETED)
                if not gathered.done():
                    gathered.add_done_callback(retrieve_outcome)
                    raise unreachable(self.settings, TimeoutError("no acknowledgement"))
            metadata = await gathered
        except KafkaError as exc:
            raise unreachable(self.settings, exc) from exc
        return [
            Submitted(request, md.topic_partition, md.offset)
            for request, md in zip(requests, metadata, strict=True)
        ]

    async def _partition(self, topic: str, tenant: str | None) -> int | None:
        """A tenant's requests all go to the partition of its name (None: by the key): the
        worker fetches each partition as far as its share of the buffer, so a tenant that
        floods one partition does not keep another's requests from being fetched, and fair
        shares see both (tenants that hash to one partition share its order)."""
        if tenant is None:
            return None
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = sorted(
                await self._producer.partitions_for(topic)
            )
        return partitions[zlib.crc32(tenant.encode()) % len(partitions)]

    async def cancel(self, request_id: str, tenant: str | None = None) -> None:
        """Ask the workers to cancel ``request_id`` (a record on ``<prefix>.cancellations``)."""
        record = CancelRecord(request_id=request_id, requested_at_ms=now_ms(), tenant=tenant)
        try:
            await (
                await self._producer.send(
                    self.topics.cancellations,
                    record.model_dump_json(exclude_none=True).encode(),
                    key=request_id.encode(),
                )
            )
        except KafkaError as exc:
            raise unreachable(self.settings, exc) from exc

    async def submit(
        self,
        model_id: str,
        prompt: str,
        priority: Priority | str = Priority.MEDIUM,
        *,
        request_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> Submitted:
        """Build and produce a request; returns once the broker has it."""
        request = self.build(
            model_id, prompt, priority, request_id=request_id, timeout_seconds=timeout_seconds
        )
        return await self.send(request)
