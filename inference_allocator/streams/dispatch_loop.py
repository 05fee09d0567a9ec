"""The worker's dispatch loop: wait for a free slot and a request, ask the scheduler which
request the slot takes, start the run. Woken by new records, freed slots and pools coming
back, never by a timer; while the worker does not know whether it still leads (a stop of
the process past the session timeout), it takes nothing."""

from __future__ import annotations

import asyncio

from .leadership import Membership
from .runs import Runs
from .scheduler import Scheduler
from .slots import SlotTable
from .waiting import Pending

#: slots started in a row before the loop lets the runs just spawned begin: one at a time,
#: slots freed together each wait a whole turn of a busy loop; all at once, no run begins
#: until every one is started (BENCHMARKS.md's history measured both)
DISPATCH_BURST = 4


class DispatchLoop:
    def __init__(
        self,
        scheduler: Scheduler,
        slots: SlotTable,
        runs: Runs,
        membership: Membership,
        wake: asyncio.Event,
    ):
        self.scheduler = scheduler
        self.slots = slots
        self.runs = runs
        self.membership = membership
        self._wake = wake  # set when records arrive, a slot frees or a pool comes back

    async def run(self) -> None:
        if self.scheduler.routed:
            await self._routed()
        else:
            await self._fast()

    def _pick(self) -> Pending | None:
        return None if self.membership.stalled() else self.scheduler.pick()

    async def _fast(self) -> None:
        """Any free slot takes the next request: wait for a slot, then for a request."""
        started = 0
        while True:
            gpu_id = await self.slots.acquire()
            pending = self._pick()
            while pending is None and not self.membership.stalled():
                self._wake.clear()
                await self._wake.wait()
                # The wait may span a stop of the process (SIGSTOP): look again before
                # taking a record, as after acquiring the slot.
                pending = self._pick()
            if pending is None:  # stalled: nothing until the group says who owns what
                self.runs.release(gpu_id)
                await self.membership.wait_until_confirmed()
                continue
            self.runs.start(gpu_id, pending)
            started += 1
            if started % DISPATCH_BURST == 0:
                await asyncio.sleep(0)  # the runs just spawned begin

    async def _routed(self) -> None:
        """Each free slot takes the most urgent waiting request its pool serves."""
        started = 0
        while True:
            if self.membership.stalled():
                await self.membership.wait_until_confirmed()
            self._wake.clear()
            match = self.scheduler.match()
            if match is None:
                await self._wake.wait()
                continue
            gpu_id, pending = match
            self.slots.take(gpu_id)
            self.runs.start(gpu_id, pending)
            started += 1
            if started % DISPATCH_BURST == 0:
                await asyncio.sleep(0)
