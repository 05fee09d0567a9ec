"""Matching responses to the callers waiting for them, by ``request_id``."""

from __future__ import annotations

import asyncio

from ..schemas import ResponseRecord


class ResponseCorrelator:
    """Pending futures by request id; the first response for an id wins, later ones drop.

    Register *before* producing the request: on a fast path the response can arrive before
    the produce call returns.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[ResponseRecord]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def awaits(self, request_id: str) -> bool:
        return request_id in self._waiting

    def register(self, request_id: str) -> asyncio.Future[ResponseRecord]:
        if request_id in self._waiting:
            raise ValueError(f"request {request_id!r} is already awaited")
        future: asyncio.Future[ResponseRecord] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def discard(self, request_id: str) -> None:
        future = self._waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.cancel()

    def resolve(self, response: ResponseRecord) -> bool:
        """Hand a response to its waiter; False when nobody here waits for it."""
        future = self._waiting.pop(response.request_id, None)
        if future is None or future.done():
            return False
        future.set_result(response)
        return True

    def fail_all(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(exc)
