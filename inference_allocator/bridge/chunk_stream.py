"""One streamed request, as a bridge follows its chunks to relay them.

The wait for the first chunk is bounded by the request's deadline (no worker starts it
later); after that, by ``INFERENCE_REQUEST_TIMEOUT_SECONDS`` between two chunks. A run
that starts again elsewhere (its worker died; the request was redelivered) has another
``attempt``: once text of the first run was relayed the stream cannot be mended, and it
ends with ``StreamBroken`` (the second run's answer is still retained, by id). A stream left
before its end (the HTTP client went away, or it timed out) cancels the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from ..errors import AllocatorError, RequestTimedOut
from ..schemas import ChunkRecord, RequestRecord, now_ms


class StreamBroken(AllocatorError):
    """The run being streamed stopped mid-stream (its worker died) and runs again."""


class Stream:
    def __init__(
        self,
        request: RequestRecord,
        queue: asyncio.Queue[ChunkRecord],
        gap_seconds: float,
        on_end: Callable[[bool], None],
    ):
        self.request = request
        self._queue = queue
        self._gap_s = gap_seconds
        self._on_end = on_end  # called with whether the stream was left before its end

    @property
    def request_id(self) -> str:
        assert self.request.request_id is not None
        return self.request.request_id

    async def chunks(self) -> AsyncIterator[ChunkRecord]:
        """The chunks of the run, in order, up to and with the ``done`` one; raises
        ``RequestTimedOut`` or ``StreamBroken``."""
        left = True
        attempt: str | None = None
        relayed = False
        try:
            while True:
                chunk = await self._next(started=attempt is not None)
                if chunk.attempt != attempt:
                    if relayed:
                        left = False  # it runs again: its answer is worth keeping
                        raise StreamBroken(
                            f"the worker running request {self.request_id} stopped in the "
                            "middle of its stream; it runs again: GET "
                            f"/api/v1/inference/{self.request_id} for its answer"
                        )
                    attempt = chunk.attempt
                relayed = relayed or bool(chunk.text)
                yield chunk
                if chunk.done:
                    left = False
                    return
        finally:
            self._on_end(left)

    async def _next(self, started: bool) -> ChunkRecord:
        if started:
            seconds = self._gap_s
            what = f"no text for {seconds:g} s"
        else:
            deadline = self.request.deadline_ms or now_ms()
            seconds = max(0.0, (deadline - now_ms()) / 1000)
            what = "not started before its deadline"
        try:
            return await asyncio.wait_for(self._queue.get(), seconds)
        except TimeoutError:
            raise RequestTimedOut(
                f"request {self.request_id}: {what}", request_id=self.request_id
            ) from None
