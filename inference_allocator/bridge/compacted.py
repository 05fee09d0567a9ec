"""A compacted topic read from its start and followed: every bridge keeps the live records
of the Files and Batch APIs' topics (one record per file or batch, keyed by its id) this
way, so any bridge answers for any of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from ..clients import make_consumer, started, topic_partitions
from ..config import Settings
from ..consumers.results import wait_caught_up
from ..eventloop import stop_task
from ..pacing import set_fetch_wait

log = logging.getLogger(__name__)

#: how long a fetch of these topics waits for records (Tansu waits it whole)
FETCH_WAIT_MS = 1000
#: called with each record's key and value (None: a tombstone), in the topic's order
Apply = Callable[[bytes, bytes | None], None]


class TopicFollower:
    """One consumer for the compacted topics ``follow``-ed before ``start``: a bridge
    follows the Files and the Batch APIs' topics with one, so that an idle bridge polls
    the broker once for both (their records are rare, and on no request's path: a fetch
    may wait long)."""

    def __init__(self, settings: Settings, what: str):
        self.settings = settings
        self.what = what
        self._applies: dict[str, Apply] = {}
        self._consumer: AIOKafkaConsumer
        self._task: asyncio.Task[None] | None = None

    def follow(self, topic: str, apply: Apply) -> None:
        self._applies[topic] = apply

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """Read the topics up to their end, then follow them (until ``stack`` closes)."""
        # Read back at the deployment's short fetch wait (Tansu waits a fetch whole, and
        # this read holds up the bridge's start), then follow at the long one.
        self._consumer = await make_consumer(self.settings)
        await stack.enter_async_context(started(self._consumer, self.settings))
        found = await topic_partitions(self._consumer, list(self._applies), self.settings)
        tps = [tp for partitions in found.values() for tp in partitions]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._follow(), name=f"bridge-{self.what}")
        stack.push_async_callback(self._stop)
        seconds = await wait_caught_up(self._consumer, tps, f"the {self.what}", self.settings)
        set_fetch_wait(self._consumer, FETCH_WAIT_MS)
        log.debug("read back the %s in %.2f s", self.what, seconds)

    async def _stop(self) -> None:
        await stop_task(self._task)

    async def _follow(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                apply = self._applies[tp.topic]
                for record in records:
                    if record.key is not None:
                        try:
                            apply(record.key, record.value)
                        except Exception:  # one bad record must not stop the others
                            log.exception("could not apply a record of %s", tp.topic)
