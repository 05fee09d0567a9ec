"""Cancellations: request ids on ``<prefix>.cancellations``, read by every worker.

Each worker reads the topic's every partition from the end (assigned, not a group member,
like a bridge reads responses), so whichever worker holds the request, waiting or running,
sees its cancellation. A cancellation that arrives before its request is fetched is
remembered (the most recent ``REMEMBERED``), and the request is answered ``cancelled``
when it is. Cancellations produced while no worker runs are not seen.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from ..clients import assigned_consumer
from ..config import Settings
from ..pacing import FetchPace
from ..schemas import CancelRecord
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

    async def start(self, stack: contextlib.AsyncExitStack, pace: FetchPace) -> None:
        """Start reading from the end at the worker's ``pace``; ``stack`` (an
        AsyncExitStack) stops the consumer."""
        self._consumer, tps = await assigned_consumer(
            self.settings,
            self.topics.cancellations,
            stack,
            # A cancellation within a status refresh is soon enough: no 2 ms polls of
            # Tansu for a topic that is quiet nearly always.
            fetch_max_wait_ms=self.settings.status_refresh_ms,
        )
        await self._consumer.seek_to_end(*tps)
        pace.follow(self._consumer, on_path=False)

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
