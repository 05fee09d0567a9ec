"""The batches of the Batch API, kept on ``<prefix>.batches`` (one partition, compacted):
one record per batch keyed by its id (OpenAI's batch object and what a runner needs to
carry on), and one keyed ``<id>/cancel`` once somebody asked to cancel it. Any bridge
writes a new batch and a cancellation; only the batch's runner (``batch_runner.py``)
writes its state after that, so a cancellation is never overwritten by a runner's
progress. Every bridge follows the topic and answers for any batch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, Field, ValidationError

from ..clients import make_producer, started
from ..config import Settings
from ..schemas import Priority, now_ms
from ..topics import Topics
from .batch_objects import BatchObject
from .compacted import TopicFollower

log = logging.getLogger(__name__)

_CANCEL = "/cancel"
#: statuses after which nothing changes
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchRecord(BaseModel):
    """A ``batches`` record: the batch, whose it is, at which level its lines run, and
    where on the responses topic its answers start (once its lines go out)."""

    batch: BatchObject
    owner: str | None = None  # the API key's name that created it (None: no keys)
    priority: Priority = Priority.LOW
    #: the responses topic's end offsets, by partition, before the first line went out
    responses_from: dict[int, int] | None = None
    #: when it was created, to the millisecond (lists put the newest first)
    created_at_ms: int = Field(default_factory=now_ms)
    #: one more on every write: a bridge that wrote a batch's state does not take it back
    #: for an earlier one it reads from the topic afterwards
    version: int = 0


class BatchBook:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.batches: dict[str, BatchRecord] = {}
        #: when a cancellation was asked for, by batch id
        self.cancelled_at: dict[str, int] = {}
        #: called with a batch's id whenever its record or its cancellation is read
        self.changed: Callable[[str], None] | None = None
        self._stack = contextlib.AsyncExitStack()
        self._producer: AIOKafkaProducer

    async def start(self, follower: TopicFollower | None = None) -> None:
        """Start writing; with ``follower``, its caller starts it (after this), else the
        batches are read back here."""
        self._producer = await make_producer(self.settings)
        await self._stack.enter_async_context(started(self._producer, self.settings))
        own = follower is None
        follower = follower or TopicFollower(self.settings, "batches")
        follower.follow(self.topics.batches, self._apply)
        if own:
            await follower.start(self._stack)

    async def stop(self) -> None:
        await self._stack.aclose()

    def _apply(self, key: bytes, value: bytes | None) -> None:
        name = key.decode(errors="replace")
        if name.endswith(_CANCEL):
            batch_id = name.removesuffix(_CANCEL)
            if value is None:
                self.cancelled_at.pop(batch_id, None)
            else:
                self.cancelled_at.setdefault(batch_id, int(value.decode() or 0))
        elif value is None:
            self.batches.pop(name, None)
            return
        else:
            try:
                record = BatchRecord.model_validate_json(value)
            except ValidationError:
                log.warning("ignoring a malformed record of batch %s", name)
                return
            known = self.batches.get(name)
            if known is not None and known.version > record.version:
                return  # written here since
            self.batches[name] = record
            batch_id = name
        if self.changed is not None:
            self.changed(batch_id)

    def view(self, record: BatchRecord) -> BatchObject:
        """The batch as its client sees it: ``cancelling`` from the moment a cancellation
        was asked for, until the runner has finished it."""
        batch = record.batch
        at = self.cancelled_at.get(batch.id)
        if at is not None and batch.status in ("validating", "in_progress", "finalizing"):
            return batch.model_copy(update={"status": "cancelling", "cancelling_at": at})
        return batch

    def get(self, batch_id: str, owner: str | None) -> BatchRecord | None:
        record = self.batches.get(batch_id)
        if record is None or (owner is not None and record.owner != owner):
            return None
        return record

    def visible(self, owner: str | None) -> list[BatchRecord]:
        """The batches ``owner`` may see, newest first (without API keys: every batch)."""
        found = [r for r in self.batches.values() if owner is None or r.owner == owner]
        return sorted(found, key=lambda r: (r.created_at_ms, r.batch.id), reverse=True)

    async def put(self, record: BatchRecord) -> None:
        """Write ``record`` (as the next version of its batch) and wait until the broker
        has it."""
        known = self.batches.get(record.batch.id)
        version = max(record.version, known.version if known is not None else -1) + 1
        record = record.model_copy(update={"version": version})
        value = record.model_dump_json(exclude_none=True).encode()
        await self._producer.send_and_wait(
            self.topics.batches, value, key=record.batch.id.encode(), partition=0
        )
        self.batches[record.batch.id] = record  # before the follower reads it back

    async def cancel(self, batch_id: str) -> int:
        """Ask for the batch to be cancelled; when that was asked first."""
        at = self.cancelled_at.get(batch_id)
        if at is None:
            at = int(time.time())
            await self._producer.send_and_wait(
                self.topics.batches, str(at).encode(), key=f"{batch_id}{_CANCEL}".encode(),
                partition=0,
            )  # fmt: skip
            self.cancelled_at.setdefault(batch_id, at)
        return self.cancelled_at[batch_id]
