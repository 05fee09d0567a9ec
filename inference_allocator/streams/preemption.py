"""The worker's preemption loop: when a waiting request has waited long enough and no free
slot can run it, ask the scheduler which run to cut short, and cut it short.

Woken when requests arrive and when runs start (a run that may be cut short); otherwise it
sleeps until the oldest waiting request that may cut one of the runs short (of a higher
level, or of the same level as background work: a batch's line) will have waited
``INFERENCE_PREEMPT_AFTER_MS``. While a request has waited that long but nothing may be
preempted for it (every run is as urgent, or was preempted its share of times), it looks
again every ``RECHECK_S`` as well: runs end and requests age without telling it.
"""

from __future__ import annotations

import asyncio
import contextlib

from .leadership import Membership
from .runs import Runs
from .scheduler import Scheduler

#: how often an overdue request with nothing to preempt for it is looked at again
RECHECK_S = 0.25


class PreemptionLoop:
    def __init__(
        self, scheduler: Scheduler, runs: Runs, membership: Membership, changed: asyncio.Event
    ):
        self.scheduler = scheduler
        self.runs = runs
        self.membership = membership
        self._changed = changed  # set when requests arrive or a run starts

    async def run(self) -> None:
        while True:
            if self.membership.stalled():
                await self.membership.wait_until_confirmed()
            self._changed.clear()
            running = self.runs.preemptible()
            decision = self.scheduler.preemption(running)
            if decision is not None:
                self.runs.preempt(*decision)
                await asyncio.sleep(0)  # the preempted run hands its slot over
                continue
            due_ms = self.scheduler.preemption_due_in_ms(running)
            timeout = None if due_ms is None else max(due_ms / 1000, RECHECK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
