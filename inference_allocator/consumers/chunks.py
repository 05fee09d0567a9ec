"""Following streamed answers: the chunk records of the requests awaited here.

Like responses, every partition of ``<prefix>.chunks`` is read from the end (assigned, not
a group member: by the reader's consumer of the answers, so one fetch brings both), and a
record is decoded only when somebody here follows its request id. Open a request's stream
*before* producing the request.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from ..schemas import ChunkRecord

log = logging.getLogger(__name__)


class ChunkStreams:
    """The chunks of each followed request, in order, in a queue of its own."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[ChunkRecord]] = {}

    @property
    def streaming(self) -> int:
        """How many streams are followed."""
        return len(self._queues)

    def open(self, request_id: str) -> asyncio.Queue[ChunkRecord]:
        """The queue the chunks of ``request_id`` arrive in, in order."""
        queue = self._queues.get(request_id)
        if queue is None:
            queue = self._queues[request_id] = asyncio.Queue()
        return queue

    def close(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    def add_records(self, records: list[ConsumerRecord]) -> None:
        """Chunk records read (from one partition, in order)."""
        queues = self._queues
        if not queues:
            return
        for record in records:
            key = record.key.decode(errors="replace") if record.key else None
            queue = queues.get(key) if key is not None else None
            if queue is None:
                continue
            try:
                queue.put_nowait(ChunkRecord.model_validate_json(record.value or b""))
            except ValidationError as exc:
                log.warning("ignoring a malformed chunk: %s", exc.errors()[0]["msg"])
