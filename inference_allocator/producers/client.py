"""A Python client that submits requests and awaits their responses over Kafka."""

from __future__ import annotations

import contextlib
from typing import Any

from ..config import Settings
from ..consumers.correlator import wait
from ..consumers.reader import ClusterReader
from ..errors import RequestTimedOut
from ..schemas import Priority, RequestRecord, ResponseRecord, now_ms
from .request_producer import RequestProducer


class InferenceClient:
    """``await client.infer(model, prompt, priority)`` returns the worker's response.

    Start it before the requests are produced: it reads responses from the end.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = RequestProducer(settings)
        self.reader = ClusterReader(settings, state=False)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> InferenceClient:
        await self._stack.enter_async_context(self.reader)
        await self._stack.enter_async_context(self.producer)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def infer(
        self,
        model_id: str,
        prompt: str,
        priority: Priority | str = Priority.MEDIUM,
        *,
        timeout_seconds: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> ResponseRecord:
        """Submit and wait; raises ``RequestTimedOut`` past the request's deadline.
        ``params`` (max_tokens, temperature, ...) pass through to the model server."""
        request = self.producer.build(
            model_id, prompt, priority, timeout_seconds=timeout_seconds, params=params
        )
        return await submit_and_wait(self.producer, self.reader, request)


async def submit_and_wait(
    producer: RequestProducer, reader: ClusterReader, request: RequestRecord
) -> ResponseRecord:
    """Produce ``request`` and await its response until the request's deadline.

    Raises ``RequestTimedOut`` at the deadline; a worker never starts the request after it.
    """
    assert request.request_id and request.deadline_ms and request.submitted_at_ms
    future = reader.correlator.register(request.request_id)  # before producing: see there
    try:
        submitted = await producer.send(request, abort=reader.reachability.lost())
        reader.note_produced(
            submitted.tp, submitted.offset, request.request_id, request.fingerprint
        )
        remaining = max(0.0, (request.deadline_ms - now_ms()) / 1000)
        return await wait(future, remaining)
    except TimeoutError:
        timeout = (request.deadline_ms - request.submitted_at_ms) / 1000
        raise RequestTimedOut(
            f"no result within {timeout:g} s; request {request.request_id} will not be "
            "started after its deadline",
            request_id=request.request_id,
        ) from None
    finally:
        reader.correlator.discard(request.request_id)
