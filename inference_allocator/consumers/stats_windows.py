"""The latest closed statistics windows on ``<prefix>.stats`` (what the statistics agent
publishes), as the dashboard and the status read them: started on first use, read back
for the last minutes, then followed at a slow pace (a window closes every few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from ..clients import assigned_consumer
from ..config import Settings
from ..eventloop import stop_task
from ..schemas import now_ms
from ..topics import Topics
from .results import caught_up, seek_since

log = logging.getLogger(__name__)

#: how far back the windows are read when the follower starts
SINCE_S = 120
#: how long a one-off look (``inference-allocator status``) waits for the read-back
READ_BACK_WAIT_S = 3.0


class StatsWindows:
    def __init__(self, settings: Settings):
        self.settings = settings
        #: the latest window per key (``model/priority/window``)
        self.latest: dict[str, dict[str, Any]] = {}
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None
        self._read_back = asyncio.Event()

    async def ensure_started(self, wait_s: float = 0.0) -> None:
        """Start following (once), and wait up to ``wait_s`` for the read-back."""
        if self._task is None or self._task.done():  # first use, or after a failure
            self._task = asyncio.create_task(self._follow_logged(), name="stats-windows")
        if wait_s > 0 and not self._read_back.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._read_back.wait(), wait_s)

    async def _follow_logged(self) -> None:
        try:
            await self._follow()
        except Exception as exc:  # the next look starts again
            log.warning("could not read the statistics windows: %s", exc)
            await self._stack.aclose()
            self._stack = contextlib.AsyncExitStack()

    async def _follow(self) -> None:
        consumer, tps = await assigned_consumer(
            self.settings,
            Topics.from_settings(self.settings).stats,
            self._stack,
            fetch_max_wait_ms=500,
        )
        await seek_since(consumer, tps, self.settings, SINCE_S)
        oldest = now_ms() - SINCE_S * 1000
        give_up_read_back = time.monotonic() + READ_BACK_WAIT_S
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if record.timestamp < oldest or not record.value or not record.key:
                        continue
                    try:
                        window = json.loads(record.value)
                    except ValueError:
                        continue
                    if isinstance(window, dict):
                        self.latest[record.key.decode(errors="replace")] = window
            if not self._read_back.is_set() and (
                await caught_up(consumer, tps) or time.monotonic() > give_up_read_back
            ):
                self._read_back.set()

    def windows(self) -> list[dict[str, Any]]:
        return [self.latest[k] for k in sorted(self.latest)]

    async def stop(self) -> None:
        await stop_task(self._task)
        await self._stack.aclose()
