"""What one bridge process holds: a request producer and a cluster reader."""

from __future__ import annotations

import contextlib

from ..config import Settings
from ..consumers.reader import ClusterReader
from ..errors import ModelNotServed, QueueFull
from ..producers.client import submit_and_wait
from ..producers.request_producer import RequestProducer
from ..schemas import InferenceRequest, ResponseRecord


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
        """Admit, produce, await; raises ``ModelNotServed``, ``QueueFull``,
        ``BrokerUnavailable`` or ``RequestTimedOut``."""
        served = self.reader.served_models()
        if served is not None and body.model_id not in served:
            raise ModelNotServed(
                f"model {body.model_id!r} is not served by this fleet; served models: "
                f"{', '.join(sorted(served))}"
            )
        waiting = self.reader.queue_size()
        if waiting >= self.settings.queue_max_size:
            raise QueueFull(
                f"queue full: {waiting} requests waiting (INFERENCE_QUEUE_MAX_SIZE="
                f"{self.settings.queue_max_size}); retry later"
            )
        request = self.producer.build(body.model_id, body.prompt, body.priority, params=body.params)
        return await submit_and_wait(self.producer, self.reader, request)
