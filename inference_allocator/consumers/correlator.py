"""Matching responses to the callers waiting for them, by ``request_id``."""

from __future__ import annotations

import asyncio

from ..schemas import ResponseRecord


class ResponseCorrelator:
    """Pending futures by request id; the first response for an id wins, later ones drop.

    Register *before* producing the request: on a fast path the response can arrive before
    the produce call returns. Callers waiting for the same id (a retry with the same id,
    a cancellation) share one future: await it through ``asyncio.shield`` (``wait``), so
    that one caller giving up does not cancel it for the others, and ``discard`` it once.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.Future[ResponseRecord], int]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def awaits(self, request_id: str) -> bool:
        return request_id in self._waiting

    def register(self, request_id: str) -> asyncio.Future[ResponseRecord]:
        """The future of ``request_id``'s response, shared with its other waiters."""
        found = self._waiting.get(request_id)
        if found is not None:
            self._waiting[request_id] = (found[0], found[1] + 1)
            return found[0]
        future: asyncio.Future[ResponseRecord] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (future, 1)
        return future

    def discard(self, request_id: str) -> None:
        """One waiter of ``request_id`` is done (answered or gave up)."""
        found = self._waiting.get(request_id)
        if found is None:
            return
        future, waiters = found
        if waiters > 1:
            self._waiting[request_id] = (future, waiters - 1)
            return
        del self._waiting[request_id]
        if not future.done():
            future.cancel()

    def resolve(self, response: ResponseRecord) -> bool:
        """Hand a response to its waiters; False when nobody here waits for it."""
        found = self._waiting.get(response.request_id)
        if found is None or found[0].done():
            return False
        found[0].set_result(response)
        return True

    def fail_all(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            if not future.done():
                future.set_exception(exc)


async def wait(future: asyncio.Future[ResponseRecord], seconds: float) -> ResponseRecord:
    """Await a shared future for at most ``seconds`` (``TimeoutError``), leaving it to the
    others waiting on it."""
    return await asyncio.wait_for(asyncio.shield(future), seconds)
