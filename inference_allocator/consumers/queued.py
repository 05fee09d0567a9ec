"""Which request ids are on the request topics and not yet answered: a bridge's index.

The bridge reads the request topics from the worker group's committed offsets on (keys
only; the value only of a record without a key), and drops what the group commits past:
what is left was sent and not yet answered, so ``GET /api/v1/inference/{id}`` can say
``queued`` for a request any client sent, through any bridge or straight to Kafka.
"""

from __future__ import annotations

from collections import deque

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from ..decoding import derived_request_id, salvage_id
from ..schemas import FINGERPRINT_HEADER


class QueuedRequests:
    def __init__(self) -> None:
        self._by_tp: dict[TopicPartition, deque[tuple[int, str]]] = {}
        # The latest record of each id (a retry is a later record of the same id).
        self._where: dict[str, tuple[TopicPartition, int]] = {}
        # The fingerprints of those sent with one (by their client's own id).
        self._fingerprints: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._where)

    def get(self, request_id: str) -> TopicPartition | None:
        """The partition of the id's latest unanswered record, or None."""
        found = self._where.get(request_id)
        return found[0] if found else None

    def fingerprint(self, request_id: str) -> str | None:
        """The fingerprint of the id's latest unanswered record, if it was sent with one."""
        return self._fingerprints.get(request_id)

    def note(
        self, tp: TopicPartition, offset: int, request_id: str, fingerprint: str | None = None
    ) -> None:
        """A record produced here: known at once, and added again when it is fetched."""
        self._where[request_id] = (tp, offset)
        self._fingerprint(request_id, fingerprint)

    def add(
        self, tp: TopicPartition, offset: int, request_id: str, fingerprint: str | None = None
    ) -> None:
        """A fetched record (fetched in offset order)."""
        queue = self._by_tp.setdefault(tp, deque())
        if queue and queue[-1][0] >= offset:
            return
        queue.append((offset, request_id))
        self._where[request_id] = (tp, offset)
        self._fingerprint(request_id, fingerprint)

    def add_records(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        for record in records:
            self.add(tp, record.offset, _request_id(record), _fingerprint(record))

    def _fingerprint(self, request_id: str, fingerprint: str | None) -> None:
        if fingerprint is None:
            self._fingerprints.pop(request_id, None)
        else:
            self._fingerprints[request_id] = fingerprint

    def prune(self, committed: dict[TopicPartition, int]) -> None:
        """Forget what the worker group has committed past (answered)."""
        for tp, offset in committed.items():
            queue = self._by_tp.get(tp)
            while queue and queue[0][0] < offset:
                at, request_id = queue.popleft()
                if self._where.get(request_id) == (tp, at):
                    del self._where[request_id]
                    self._fingerprints.pop(request_id, None)


def _fingerprint(record: ConsumerRecord) -> str | None:
    for name, value in record.headers or ():
        if name == FINGERPRINT_HEADER and value:
            return value.decode(errors="replace")
    return None


def _request_id(record: ConsumerRecord) -> str:
    """The id a worker gives the record (see ``decoding.decode_request``): the
    key when there is one (the contract: records are keyed by their request_id)."""
    if record.key:
        return record.key.decode(errors="replace")
    return salvage_id(record.value or b"") or derived_request_id(
        record.topic, record.partition, record.offset
    )
