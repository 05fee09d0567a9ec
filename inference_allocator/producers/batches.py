"""Records produced in record batches: every record added while the previous batches are
on their way (or, with a linger, within it) goes out with one ``send_batch`` per partition.

aiokafka's ``send`` does, for every record, a metadata check, the partitioner, the
accumulator and a future; here a record is appended to its topic's list, and when it goes
out to its partition's ``BatchBuilder``. Adding is synchronous and makes no future: a
caller that wants to know the outcome passes ``then``, called once the broker has the
record (or with the error of its batch), in the sending task, with no turn of the event
loop per record (``acked`` makes a future of it, for callers off the hot path). Used for
the worker's answers (no linger: a lone answer goes out on the loop's next turn, answers
given meanwhile join it) and its slot-table records (a 20 ms linger, and a state that a
later one of its slot replaces is left out). Partitions are chosen by key by
``clients.crc32_partitioner``, the producer's own partitioner, when the batch goes out: a
topic whose partitions are not known yet is looked up then, never in ``add``.

Batches are cut to the topic's ``max.message.bytes`` where the broker told it
(``batch_limits``), and a record larger than that is refused in ``add``: a batch the
broker refuses as too large has spent its sequence numbers, and an idempotent producer's
later batches to that partition are then refused as out of order, for good. Where no
limit is known, a batch the broker finds too large fails every record in it; a caller
retries a record ``alone`` to learn whether it is the one (``streams.answers``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from ..clients import crc32_partitioner

log = logging.getLogger(__name__)

#: called with None once the broker has a record, or with its batch's error
#: (``asyncio.CancelledError`` when the batches closed before it went out)
Then = Callable[[BaseException | None], None]
#: a record: key, value, and what to call when its batch is done
_Entry = tuple[bytes | None, bytes | None, list[Then]]
#: more than a record's header and the batch's take (the exact size is counted only above)
_OVERHEAD_BYTES = 1024
_NONE: list[Then] = []  # shared by the records nobody waits for (never appended to)


class _Topic:
    """What waits to go out to one topic: its records (None where a later one replaced
    it), and where the replaceable ones are (by key)."""

    __slots__ = ("entries", "replaceable_at")

    def __init__(self) -> None:
        self.entries: list[_Entry | None] = []
        self.replaceable_at: dict[bytes | None, int] = {}


def _notify(entries: Sequence[_Entry], error: BaseException | None) -> None:
    for _, _, thens in entries:
        for then in thens:
            try:
                then(error)
            except Exception:  # a caller's bug must not stop the batches of the others
                log.exception("a record batch's callback failed")


class RecordBatches:
    """Batches the records ``add``-ed; ``attach`` the producer before the first one."""

    def __init__(
        self,
        name: str,
        linger_s: float = 0.0,
        *,
        failed: Callable[[BaseException], None] | None = None,
        max_request_bytes: int = 1048576,  # aiokafka's default, which make_producer keeps
    ):
        self.name = name
        self.linger_s = linger_s
        #: called with the error of each batch the broker did not take
        self.failed = failed
        self.max_request_bytes = max_request_bytes
        #: the largest record batch a topic takes, where the broker told it
        self.batch_limits: dict[str, int] = {}
        self._producer: AIOKafkaProducer
        #: what waits for the next send, by topic
        self._waiting: dict[str, _Topic] = {}
        #: records that go out in a batch of their own
        self._alone: list[tuple[str, _Entry]] = []
        self._sending: asyncio.Task[None] | None = None
        #: the records the sending task took and has not settled, by id
        self._unsettled: dict[int, _Entry] = {}

    def attach(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        alone: bool = False,
        replaceable: bool = False,
        then: Then | None = None,
    ) -> None:
        """Queue one record; ``then`` is called when its batch is done (see ``Then``).

        ``alone``: in a batch of its own (a batch too large for the broker fails every
        record in it). ``replaceable``: left out if a later record with its key is added
        before it goes out (for a compacted topic, where only a key's last record stays);
        its ``then`` is then called with the later record's.

        Raises ``MessageSizeTooLargeError`` at once for a record larger than a produce
        request may be, as ``send`` does."""
        limit = min(self.max_request_bytes, self.batch_limits.get(topic, self.max_request_bytes))
        if len(value or b"") + len(key or b"") > limit - _OVERHEAD_BYTES:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
            if size > limit:
                within = "a produce request may be" if limit == self.max_request_bytes else "" \
                    f"{topic} takes"  # fmt: skip
                raise MessageSizeTooLargeError(
                    f"the record is {size} bytes, more than {within} ({limit})"
                )
        thens = _NONE if then is None else [then]
        if alone:
            self._alone.append((topic, (key, value, thens)))
        else:
            waiting = self._waiting.get(topic)
            if waiting is None:
                waiting = self._waiting[topic] = _Topic()
            entries = waiting.entries
            if waiting.replaceable_at:
                at = waiting.replaceable_at.pop(key, None)
                if at is not None:
                    replaced = entries[at]
                    entries[at] = None
                    if replaced is not None and replaced[2]:
                        thens = replaced[2] + thens
            if replaceable:
                waiting.replaceable_at[key] = len(entries)
            entries.append((key, value, thens))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send_batches(), name=self.name)

    def acked(
        self, topic: str, key: bytes | None, value: bytes | None, **options: bool
    ) -> asyncio.Future[None]:
        """``add``, with a future done when the broker has the record (or failed with its
        batch's error): for callers that wait."""
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def then(error: BaseException | None) -> None:
            if ack.done():
                return
            if error is None:
                ack.set_result(None)
            elif isinstance(error, asyncio.CancelledError):
                ack.cancel()
            else:
                ack.set_exception(error)

        self.add(topic, key, value, then=then, **options)
        return ack

    async def _send_batches(self) -> None:
        """Send what waits (after the linger), wait for the acks, until nothing waits."""
        while self._waiting or self._alone:
            # Records added in this turn of the loop join them (and, with a linger, those
            # of the linger).
            await asyncio.sleep(self.linger_s)
            waiting, self._waiting = self._waiting, {}
            alone, self._alone = self._alone, []
            taken = [(t, [e for e in p.entries if e is not None]) for t, p in waiting.items()]
            taken += [(topic, [entry]) for topic, entry in alone]
            # Every entry taken is settled exactly once: when its batch is done, when it
            # fails, or cancelled (closing).
            self._unsettled = {id(e): e for _, entries in taken for e in entries}
            try:
                cycle: list[tuple[TopicPartition, list[_Entry]]] = []
                for topic, entries in taken:
                    cycle += await self._by_partition(topic, entries)
                sent = [(entries, await self._send(tp, entries)) for tp, entries in cycle]
                for entries, acks in sent:
                    if not acks:
                        continue  # failed already
                    try:
                        # One partition's batches are written in order: the last ack is last.
                        await acks[-1]
                    except Exception as exc:  # a KafkaError, or the producer closed under it
                        self._fail(entries, exc)
                        continue
                    self._settle(entries, None)
            except asyncio.CancelledError:
                self._settle(list(self._unsettled.values()), asyncio.CancelledError())
                raise

    def _settle(self, entries: Sequence[_Entry], error: BaseException | None) -> None:
        for entry in entries:
            if self._unsettled.pop(id(entry), None) is not None:
                _notify([entry], error)

    async def _by_partition(
        self, topic: str, entries: list[_Entry]
    ) -> list[tuple[TopicPartition, list[_Entry]]]:
        """``entries`` by partition (those of a topic that cannot be looked up fail)."""
        known = self._producer.client.cluster.partitions_for_topic(topic)
        if not known:
            try:
                known = await self._producer.partitions_for(topic)
            except Exception as exc:  # the broker is away, or the topic is gone
                self._fail(entries, exc)
                return []
        numbers = sorted(known)
        parts: dict[int, list[_Entry]] = {}
        for entry in entries:
            parts.setdefault(crc32_partitioner(entry[0], numbers, numbers), []).append(entry)
        return [(TopicPartition(topic, p), part) for p, part in parts.items()]

    async def _send(
        self, tp: TopicPartition, entries: list[_Entry]
    ) -> list[asyncio.Future[object]]:
        """``entries`` handed to the producer in as few batches as they fit in; their acks
        (none, and ``entries`` failed, when the producer refuses them)."""
        limit = self.batch_limits.get(tp.topic)
        batches = [self._producer.create_batch()]
        size = 0  # the last batch's, as an upper bound (counted only under a limit)
        for key, value, _ in entries:
            record = (
                0
                if limit is None
                else DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
            )
            full = limit is not None and size + record > limit and batches[-1].record_count() > 0
            if full or batches[-1].append(key=key, value=value, timestamp=None) is None:
                batches.append(self._producer.create_batch())
                batches[-1].append(key=key, value=value, timestamp=None)
                size = 0
            size += record
        try:
            return [
                await self._producer.send_batch(batch, tp.topic, partition=tp.partition)
                for batch in batches
            ]
        except Exception as exc:
            self._fail(entries, exc)
            return []

    def _fail(self, entries: Sequence[_Entry], exc: BaseException) -> None:
        if self.failed is not None:
            self.failed(exc)
        self._settle(entries, exc)

    async def close(self) -> None:
        """Stop sending; what did not go out is notified ``CancelledError``."""
        if self._sending is not None:
            self._sending.cancel()
            await asyncio.gather(self._sending, return_exceptions=True)
        for pending in self._waiting.values():
            _notify([e for e in pending.entries if e is not None], asyncio.CancelledError())
        _notify([entry for _, entry in self._alone], asyncio.CancelledError())
        self._waiting, self._alone = {}, []
