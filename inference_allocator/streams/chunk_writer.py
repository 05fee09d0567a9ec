"""Streamed answers: a request's text as chunk records, in order, while it is generated.

Every chunk of a request is keyed by its id, so all of them land in one partition of
``<prefix>.chunks`` in the order they were sent (one producer, one request in flight per
connection). Chunks are sent without waiting for each acknowledgement; the last one
(``done``, with the answer's status) is acknowledged before the answer goes to
``<prefix>.responses``, so a reader that follows the chunks never needs the answer to end.
A chunk the broker refuses is logged and lost: the answer on the responses topic is the
record of what was said, and a follower that misses the end times out with an error.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ..schemas import ChunkRecord, ResponseRecord

log = logging.getLogger(__name__)

#: how long the last chunk of a stream may take to be acknowledged before the answer goes
_DONE_TIMEOUT_S = 5.0


class ChunkWriter:
    """The chunks of one run of one streamed request."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, request_id: str, worker_id: str):
        self._producer = producer
        self._topic = topic
        self._key = request_id.encode()
        self.request_id = request_id
        self.worker_id = worker_id
        #: this run: a redelivered request runs again under another attempt
        self.attempt = f"{worker_id}:{secrets.token_hex(4)}"
        self.seq = 0
        self.written = False

    async def start(self) -> None:
        """The first record, without text: the request runs (a follower that waited for
        it to start now waits for text, however long the prompt takes to read)."""
        await self._send(ChunkRecord(**self._common()))

    async def write(self, text: str) -> None:
        """One piece of the text, sent now (not awaited)."""
        if text:
            self.written = True
            await self._send(ChunkRecord(**self._common(), text=text))

    async def finish(self, response: ResponseRecord) -> None:
        """The end of the stream: the text not streamed yet (a run that could not stream,
        an answer given again), then ``done`` with the answer's status, acknowledged."""
        if not self.written and response.output:
            await self.write(response.output)
        done = ChunkRecord(
            **self._common(),
            done=True,
            status=response.status,
            finish_reason=response.finish_reason,
            usage=response.usage,
            error=response.error,
        )
        ack = await self._send(done)
        if ack is None:
            return
        try:
            await asyncio.wait_for(ack, _DONE_TIMEOUT_S)
        except (KafkaError, TimeoutError) as exc:
            log.warning("the end of %s's stream was not acknowledged: %r", self.request_id, exc)

    def _common(self) -> dict[str, object]:
        seq, self.seq = self.seq, self.seq + 1
        return dict(
            request_id=self.request_id, attempt=self.attempt, seq=seq, worker_id=self.worker_id
        )

    async def _send(self, chunk: ChunkRecord) -> asyncio.Future[object] | None:
        try:
            return await self._producer.send(
                self._topic, chunk.model_dump_json(exclude_none=True).encode(), key=self._key
            )
        except KafkaError as exc:
            log.warning("a chunk of %s was not sent: %r", self.request_id, exc)
            return None
