"""Following streamed answers: the chunk records of the requests awaited here.

Like responses, every partition of ``<prefix>.chunks`` is read from the end (assigned, not
a group member), and a record is decoded only when somebody here follows its request id.
Open a request's stream *before* producing the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from ..clients import assigned_consumer
from ..config import Settings
from ..schemas import ChunkRecord
from ..topics import Topics

log = logging.getLogger(__name__)


class ChunkStreams:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self._queues: dict[str, asyncio.Queue[ChunkRecord]] = {}
        self._consumer: AIOKafkaConsumer
        self._task: asyncio.Task[None] | None = None

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """Read from the end from now on; ``stack`` stops it."""
        # Chunks are never written in a transaction (exactly-once holds the answer, not
        # the stream): a run cut short shows as another attempt of the same request.
        self._consumer, tps = await assigned_consumer(self.settings, self.topics.chunks, stack)
        await self._consumer.seek_to_end(*tps)
        self._task = asyncio.create_task(self._run(), name="reader-chunks")
        stack.push_async_callback(self._stop)

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def open(self, request_id: str) -> asyncio.Queue[ChunkRecord]:
        """The queue the chunks of ``request_id`` arrive in, in order."""
        queue = self._queues.get(request_id)
        if queue is None:
            queue = self._queues[request_id] = asyncio.Queue()
        return queue

    def close(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    async def _run(self) -> None:
        queues = self._queues
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    key = record.key.decode(errors="replace") if record.key else None
                    queue = queues.get(key) if key is not None else None
                    if queue is None:
                        continue
                    try:
                        queue.put_nowait(ChunkRecord.model_validate_json(record.value or b""))
                    except ValidationError as exc:
                        log.warning("ignoring a malformed chunk: %s", exc.errors()[0]["msg"])
