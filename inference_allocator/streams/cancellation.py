"""Cancellations: request ids on ``<prefix>.cancellations``, read by every worker.

Each worker reads the topic's every partition (assigned, not a group member, like a bridge
reads responses), so whichever worker holds the request, waiting or running, sees its
cancellation. A cancellation that arrives before its request is fetched is remembered (the
most recent ``REMEMBERED``), and the request is answered ``cancelled`` when it is. A worker
that starts reads back the cancellations of the last ``INFERENCE_RESULT_RETENTION_SECONDS``
before it takes a request, so one produced while no worker ran is seen too.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from ..clients import assigned_consumer
from ..config import Settings
from ..consumers.results import seek_since, wait_caught_up
from ..pacing import FetchPace
from ..schemas import CancelRecord, now_ms
from ..topics import Topics

log = logging.getLogger(__name__)

REMEMBERED = 10_000


class Cancellations:
    def __init__(self, settings: Settings, on_cancel: Callable[[str], Awaitable[bool]]):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self._on_cancel = on_cancel
        self._early: OrderedDict[str, None] = OrderedDict()
        self._consumer: AIOKafkaConsumer
        self._tps: list[TopicPartition] = []
        #: while reading back: older cancellations are skipped (Tansu reads from the start)
        self._since_ms = 0

    async def start(self, stack: contextlib.AsyncExitStack, pace: FetchPace) -> None:
        """Start reading the retention window's cancellations (read by ``run``) at the
        worker's ``pace``; ``stack`` (an AsyncExitStack) stops the consumer."""
        self._consumer, self._tps = await assigned_consumer(
            self.settings,
            self.topics.cancellations,
            stack,
            # A cancellation within a status refresh is soon enough: no 2 ms polls of
            # Tansu for a topic that is quiet nearly always.
            fetch_max_wait_ms=self.settings.status_refresh_ms,
        )
        window_s = self.settings.result_retention_seconds
        self._since_ms = now_ms() - int(window_s * 1000)
        await seek_since(self._consumer, self._tps, self.settings, window_s)
        pace.follow(self._consumer, on_path=False)

    async def caught_up(self) -> float:
        """Once ``run`` has read back the window's cancellations; the seconds it took. From
        then on none is skipped, whatever its timestamp."""
        seconds = await wait_caught_up(
            self._consumer, self._tps, "the cancellations", self.settings
        )
        self._since_ms = 0
        return seconds

    def pending(self, request_id: str) -> bool:
        """Whether ``request_id`` was cancelled before it was fetched (then forgotten)."""
        if request_id in self._early:
            del self._early[request_id]
            return True
        return False

    async def run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if record.timestamp < self._since_ms:
                        continue
                    request_id = self._request_id(record.key, record.value)
                    if request_id is None:
                        continue
                    if not await self._on_cancel(request_id):
                        self._early[request_id] = None  # not here (yet)
                        if len(self._early) > REMEMBERED:
                            self._early.popitem(last=False)

    @staticmethod
    def _request_id(key: bytes | None, value: bytes | None) -> str | None:
        if value:
            try:
                return CancelRecord.model_validate_json(value).request_id
            except ValidationError:
                pass
        if key:
            return key.decode(errors="replace")
        log.warning("ignoring a cancellation with neither a key nor a request_id")
        return None
