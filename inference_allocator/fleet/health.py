"""Whether each pool's server answers: checked at start and every ``health_interval_seconds``;
a pool that does not answer is down (its slots take no request) until a check passes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .pools import Fleet, Pool

log = logging.getLogger(__name__)

OnChange = Callable[[Pool, bool], Awaitable[None]]


class PoolHealth:
    """Runs each checkable pool's ``backend.healthy()``; calls ``on_change(pool, up)`` when a
    pool goes down or comes back."""

    def __init__(self, fleet: Fleet, on_change: OnChange):
        self.pools = [p for p in fleet.pools if p.can_go_down]
        self.on_change = on_change
        self._due = {p.name: 0.0 for p in self.pools}

    @property
    def needed(self) -> bool:
        return bool(self.pools)

    async def check(self, pool: Pool) -> None:
        up = bool(await pool.backend.healthy())  # type: ignore[attr-defined]
        self._due[pool.name] = time.monotonic() + pool.spec.health_interval_seconds
        if up and pool.mark_up():
            log.info("pool %s is back: %s answers", pool.name, pool.endpoint)
            await self.on_change(pool, True)
        elif not up and pool.mark_down(f"{pool.endpoint} does not answer"):
            log.warning("pool %s is down: %s does not answer", pool.name, pool.endpoint)
            await self.on_change(pool, False)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(pool) for pool in self.pools))

    async def run(self) -> None:
        """Check every pool when its interval has passed, for ever."""
        while True:
            now = time.monotonic()
            due = [p for p in self.pools if self._due[p.name] <= now]
            if due:
                await asyncio.gather(*(self.check(pool) for pool in due))
            next_due = min(self._due.values(), default=now + 1.0)
            await asyncio.sleep(max(0.05, next_due - time.monotonic()))
