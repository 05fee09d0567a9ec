"""The limits of the worker's pools with ``slots = "auto"``: how many of their slots are in
use, found from their servers (``fleet.capacity``), applied by parking the slots above the
limit (out of the slot table, never free) and bringing them back when it rises.

Each auto pool's server is asked at start (before the slots are announced) and then every
``health_interval_seconds`` (a quarter of a second for a mock); a server that says nothing
is judged by the time per token of the runs that end (``ran``). Each change of a limit is
logged once and shown in status (``pools[].slots``), ``/metrics`` and the dashboard.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..fleet.capacity import Capacity
from ..fleet.pools import Fleet, Pool
from ..metrics import WorkerMetrics
from .announcer import SlotAnnouncer
from .slots import SlotTable

log = logging.getLogger(__name__)

#: how often a mock pool's limit is looked at (a server's: its health interval)
MOCK_INTERVAL_S = 0.25


class PoolLimits:
    def __init__(
        self,
        fleet: Fleet,
        slots: SlotTable,
        announcer: SlotAnnouncer,
        metrics: WorkerMetrics,
        wake: Callable[[], None],
    ):
        self.fleet = fleet
        self.slots = slots
        self.announcer = announcer
        self.metrics = metrics
        self._wake = wake  # slots came back: the dispatch loop looks again
        self.capacity = {
            pool.name: Capacity(len(pool.gpu_ids)) for pool in fleet.pools if pool.spec.auto
        }
        self._silent: set[str] = set()  # pools whose server said nothing last time
        for pool in self._auto():  # the limit starts at 1, before anything is announced
            self.slots.park(list(pool.gpu_ids)[1:])
            metrics.pool_limit.labels(pool.name).set(1)

    @property
    def needed(self) -> bool:
        return bool(self.capacity)

    async def start(self) -> None:
        """Ask every auto pool's server once, at start."""
        await asyncio.gather(*(self.check(pool) for pool in self._auto()))

    async def run(self) -> None:
        """Ask each auto pool's server again, every interval."""
        await asyncio.gather(*(self._keep(pool, self._interval(pool)) for pool in self._auto()))

    async def _keep(self, pool: Pool, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if pool.up:
                await self.check(pool)

    async def check(self, pool: Pool) -> None:
        report_of = getattr(pool.backend, "server_report", None)
        try:
            report = await report_of() if report_of is not None else None
        except Exception as exc:  # a server's odd answer must not stop the worker
            log.warning("pool %s: its server's capacity could not be read: %r", pool.name, exc)
            report = None
        if report is None:
            self._silent.add(pool.name)
            return
        self._silent.discard(pool.name)
        capacity = self.capacity[pool.name]
        if capacity.told(report, self.slots.leased_in(pool.gpu_ids)):
            self._apply(pool)

    def ran(self, pool: Pool, seconds: float, tokens: int | None) -> None:
        """A run on an auto pool whose server says nothing ended: its time per token."""
        if pool.name not in self._silent:
            return
        in_flight = self.slots.leased_in(pool.gpu_ids) + 1  # it was one of them
        if self.capacity[pool.name].ran(seconds, tokens, in_flight):
            self._apply(pool)

    def _apply(self, pool: Pool) -> None:
        capacity = self.capacity[pool.name]
        limit = capacity.limit
        active = self.slots.active(pool.gpu_ids)
        gpu_ids = list(pool.gpu_ids)
        if limit > active:
            resting = [g for g in gpu_ids if self.slots.parked_or_parking(g)]
            records = self.slots.unpark(resting[: limit - active])
            self._wake()
        else:
            in_use = [g for g in gpu_ids if not self.slots.parked_or_parking(g)]
            free = set(self.slots.free_ids())
            # the free ones first (parked at once), then the latest numbered
            in_use.sort(key=lambda g: (g in free, g), reverse=True)
            records = self.slots.park(in_use[: active - limit])
        for record in records:
            self.announcer.publish(record)
        self.metrics.pool_limit.labels(pool.name).set(limit)
        log.info("pool %s: %d slots in use (from %s)", pool.name, limit, capacity.source)

    def _auto(self) -> list[Pool]:
        return [pool for pool in self.fleet.pools if pool.name in self.capacity]

    @staticmethod
    def _interval(pool: Pool) -> float:
        return (
            pool.spec.health_interval_seconds if pool.spec.backend == "openai" else MOCK_INTERVAL_S
        )
