"""A compacted topic read from its start and followed: every bridge keeps the live records
of the Files and Batch APIs' topics (one record per file or batch, keyed by its id) this
way, so any bridge answers for any of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from ..clients import assigned_consumer
from ..config import Settings
from ..consumers.results import wait_caught_up

log = logging.getLogger(__name__)

#: called with each record's key and value (None: a tombstone), in the topic's order
Apply = Callable[[bytes, bytes | None], None]


class TopicFollower:
    def __init__(self, settings: Settings, topic: str, apply: Apply, what: str):
        self.settings = settings
        self.topic = topic
        self.apply = apply
        self.what = what
        self._consumer: AIOKafkaConsumer
        self._task: asyncio.Task[None] | None = None

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """Read the topic up to its end, then follow it (until ``stack`` closes)."""
        self._consumer, tps = await assigned_consumer(
            self.settings, self.topic, stack, fetch_max_wait_ms=500
        )
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._follow(), name=f"bridge-{self.what}")
        stack.push_async_callback(self._stop)
        seconds = await wait_caught_up(self._consumer, tps, f"the {self.what}", self.settings)
        log.debug("read back the %s in %.2f s", self.what, seconds)

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if record.key is not None:
                        try:
                            self.apply(record.key, record.value)
                        except Exception:  # one bad record must not stop the others
                            log.exception("could not apply a record of %s", self.topic)
