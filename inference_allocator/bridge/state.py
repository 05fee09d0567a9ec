"""What one bridge process holds: a request producer and a cluster reader."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..config import Settings
from ..consumers.rate import retry_after
from ..consumers.reader import ClusterReader
from ..errors import ModelNotServed, QueueFull
from ..producers.client import submit_and_wait
from ..producers.request_producer import RequestProducer
from ..schemas import InferenceRequest, ResponseRecord

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT_S = 3.0
#: how long DELETE waits for the answer to a cancellation
CANCEL_WAIT_S = 3.0


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
        try:  # an unreachable broker must not hold a shutdown for a produce timeout
            await asyncio.wait_for(self._stack.aclose(), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("the Kafka clients did not close within %.0f s; leaving anyway",
                        _CLOSE_TIMEOUT_S)  # fmt: skip

    async def cancel(self, request_id: str, tenant: str | None = None) -> ResponseRecord | None:
        """Cancel a request from any bridge. Returns its answer once the worker holding it
        has given one (``cancelled``, or how it finished if it finished first), or None when
        no answer came within ``CANCEL_WAIT_S`` (unknown, already finished earlier, or not
        yet fetched by a worker, which will then answer it ``cancelled``). A POST waiting
        on this bridge for the same request gets the answer instead: then None at once."""
        if not self.reader.reachability.up:
            raise self.reader.reachability.error()
        correlator = self.reader.correlator
        if correlator.awaits(request_id):
            await self.producer.cancel(request_id, tenant)
            return None
        future = correlator.register(request_id)
        try:
            await self.producer.cancel(request_id, tenant)
            return await asyncio.wait_for(future, CANCEL_WAIT_S)
        except TimeoutError:
            return None
        finally:
            correlator.discard(request_id)

    async def infer(self, body: InferenceRequest, tenant: str | None = None) -> ResponseRecord:
        """Admit, produce, await; raises ``ModelNotServed``, ``QueueFull``,
        ``BrokerUnavailable`` or ``RequestTimedOut``."""
        if not self.reader.reachability.up:
            raise self.reader.reachability.error()
        served = self.reader.served_models()
        if served is not None and body.model_id not in served:
            raise ModelNotServed(
                f"model {body.model_id!r} is not served by this fleet; served models: "
                f"{', '.join(sorted(served))}"
            )
        waiting = self.reader.queue_size()
        limit = self.settings.queue_max_size
        if waiting >= limit:
            rate = self.reader.completions.per_second()
            after = retry_after(waiting, limit, rate, self.settings.retry_after_seconds)
            raise QueueFull(
                f"queue full: {waiting} requests waiting (INFERENCE_QUEUE_MAX_SIZE={limit}), "
                f"answered at {rate:.1f}/s lately; retry in {after} s",
                retry_after=after,
            )
        request = self.producer.build(
            body.model_id,
            body.prompt,
            body.priority,
            params=body.params,
            tenant=tenant,
            timeout_seconds=body.timeout_seconds,
        )
        return await submit_and_wait(self.producer, self.reader, request)
