"""What one bridge process holds: a request producer and a cluster reader."""

from __future__ import annotations

import asyncio
import contextlib

from ..config import Settings
from ..consumers.reader import ClusterReader
from ..errors import QueueFull, RequestTimedOut
from ..producers.request_producer import RequestProducer
from ..schemas import InferenceRequest, ResponseRecord, now_ms


class Bridge:
    """Produces HTTP requests onto Kafka and awaits their correlated responses."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = RequestProducer(settings)
        self.reader = ClusterReader(settings, state=True)
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        await self._stack.enter_async_context(self.reader)
        await self._stack.enter_async_context(self.producer)

    async def stop(self) -> None:
        await self._stack.aclose()

    async def infer(self, body: InferenceRequest) -> ResponseRecord:
        """Admit, produce, await; raises ``QueueFull`` or ``RequestTimedOut``."""
        waiting = self.reader.queue_size()
        if waiting >= self.settings.queue_max_size:
            raise QueueFull(
                f"queue full: {waiting} requests waiting (INFERENCE_QUEUE_MAX_SIZE="
                f"{self.settings.queue_max_size}); retry later"
            )
        request = self.producer.build(body.model_id, body.prompt, body.priority)
        assert request.request_id and request.deadline_ms
        correlator = self.reader.correlator
        future = correlator.register(request.request_id)
        try:
            submitted = await self.producer.send(request)
            self.reader.note_produced(submitted.tp, submitted.offset)
            remaining = max(0.0, (request.deadline_ms - now_ms()) / 1000)
            return await asyncio.wait_for(future, remaining)
        except TimeoutError:
            raise RequestTimedOut(
                f"no result within {self.settings.request_timeout_seconds:g} s; request "
                f"{request.request_id} will not be started after its deadline"
            ) from None
        finally:
            correlator.discard(request.request_id)
