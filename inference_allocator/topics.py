"""Topic names of one deployment and their creation."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from .clients import connection_options, started
from .config import Settings
from .errors import BrokerError
from .schemas import PRIORITIES, Priority

log = logging.getLogger(__name__)

_TOPIC_EXISTS = 36


@dataclass(frozen=True)
class Topics:
    """The topic names under one prefix (``inference`` unless configured)."""

    prefix: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(settings.topic_prefix)

    def request(self, priority: Priority) -> str:
        return f"{self.prefix}.requests.{priority.value}"

    @property
    def requests(self) -> tuple[str, ...]:
        """Request topics, most urgent first."""
        return tuple(self.request(p) for p in PRIORITIES)

    @property
    def responses(self) -> str:
        return f"{self.prefix}.responses"

    @property
    def gpu_slots(self) -> str:
        return f"{self.prefix}.gpu-slots"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def cancellations(self) -> str:
        return f"{self.prefix}.cancellations"

    @property
    def stats(self) -> str:
        """Closed statistics windows per model and priority (the stats agent's output)."""
        return f"{self.prefix}.stats"

    @property
    def chunks(self) -> str:
        """The text of streamed answers as it is generated (``ChunkRecord``)."""
        return f"{self.prefix}.chunks"

    @property
    def files(self) -> str:
        """Uploaded files, one record each (the Files API; ``bridge/files.py``)."""
        return f"{self.prefix}.files"

    @property
    def file_chunks(self) -> str:
        """Uploaded files' content, in chunks."""
        return f"{self.prefix}.file-chunks"

    @property
    def batches(self) -> str:
        """Batches of the Batch API, one record each, and their cancellations
        (``bridge/batch_book.py``)."""
        return f"{self.prefix}.batches"

    def priority_of(self, topic: str) -> Priority:
        """The level a request topic stands for."""
        return _LEVEL_BY_SUFFIX[topic.rsplit(".", 1)[-1]]


_LEVEL_BY_SUFFIX = {p.value: p for p in PRIORITIES}


# The slot table is read from its start by every bridge: compaction keeps that replay short.
# Only closed segments are compacted, so segments are small (1 MiB, or 10 minutes), and a
# segment is cleaned once a tenth of it is superseded. Tombstones of stopped workers'
# slots stay an hour, so a reader that was briefly behind still sees them.
SLOT_TABLE_CONFIG = {
    "cleanup.policy": "compact",
    "segment.bytes": str(1024 * 1024),
    "segment.ms": str(10 * 60 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(60 * 60 * 1000),
}


def topic_specs(settings: Settings) -> list[NewTopic]:
    topics = Topics.from_settings(settings)
    rf = settings.replication_factor
    specs = [NewTopic(name, settings.request_partitions, rf) for name in topics.requests]
    specs.append(NewTopic(topics.responses, settings.response_partitions, rf))
    specs.append(NewTopic(topics.gpu_slots, 1, rf, topic_configs=SLOT_TABLE_CONFIG))
    specs.append(NewTopic(topics.dlq, 1, rf))
    specs.append(NewTopic(topics.cancellations, 1, rf))
    specs.append(NewTopic(topics.chunks, settings.response_partitions, rf))
    specs.append(NewTopic(topics.stats, 1, rf))
    # Files stay until deleted (a tombstone): compacted, never expired by time.
    kept = {"cleanup.policy": "compact", "max.message.bytes": str(2 * 1024 * 1024)}
    specs.append(NewTopic(topics.files, 1, rf, topic_configs=kept))
    specs.append(NewTopic(topics.file_chunks, 1, rf, topic_configs=kept))
    # One partition: the bridge the batch-runners group gives it runs every batch.
    specs.append(NewTopic(topics.batches, 1, rf, topic_configs={"cleanup.policy": "compact"}))
    return specs


async def ensure_topics(settings: Settings) -> None:
    """Create every topic of the deployment that does not exist yet (idempotent)."""
    admin = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=15_000)
    async with started(admin, settings, stop=admin.close):
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        if not missing:
            return
        try:
            response = await admin.create_topics(missing)
        except KafkaError as exc:
            raise BrokerError(
                f"could not create topics on {settings.bootstrap_servers}: {exc}"
            ) from exc
        for name, code, message in response.topic_errors:
            if code not in (0, _TOPIC_EXISTS):
                raise BrokerError(f"could not create topic {name!r}: {message} (code {code})")
        await _wait_until_led(admin, [spec.name for spec in missing], settings)
        log.info("created topics: %s", ", ".join(spec.name for spec in missing))


async def record_batch_limits(settings: Settings, names: list[str]) -> dict[str, int]:
    """The largest record batch each topic takes (its ``max.message.bytes``), for those
    whose broker says; none where it does not (the embedded Tansu enforces none).

    A producer that lets the broker refuse a batch as too large has spent its sequence
    numbers: with idempotence, the partition then refuses every later batch of that
    producer as out of order, so the batches must be cut to size before they go."""
    admin = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=15_000)
    limits: dict[str, int] = {}
    try:
        async with started(admin, settings, stop=admin.close):
            wanted = [
                ConfigResource(ConfigResourceType.TOPIC, name, {"max.message.bytes": None})
                for name in names
            ]
            for response in await admin.describe_configs(wanted):
                for _, _, _, name, entries in response.resources:
                    for entry in entries:
                        if entry[0] == "max.message.bytes" and entry[1]:
                            limits[name] = int(entry[1])
    except (KafkaError, ValueError, TypeError) as exc:  # a broker without DescribeConfigs
        log.debug("no max.message.bytes from %s: %r", settings.bootstrap_servers, exc)
    return limits


_LEADER_WAIT_S = 30.0


async def _wait_until_led(admin: AIOKafkaAdminClient, names: list[str], settings: Settings) -> None:
    """Apache Kafka answers CreateTopics before every partition has a leader in the
    brokers' metadata: a client that looked right away would find no partitions."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _LEADER_WAIT_S
    while True:
        described = await admin.describe_topics(names)
        pending = [
            topic["topic"]
            for topic in described
            if topic["error_code"] != 0
            or not topic["partitions"]
            or any(p["leader"] < 0 for p in topic["partitions"])
        ]
        if not pending:
            return
        if loop.time() > deadline:
            raise BrokerError(
                f"topics {', '.join(pending)} have no leader on {settings.bootstrap_servers} "
                f"{_LEADER_WAIT_S:.0f} s after their creation"
            )
        await asyncio.sleep(0.05)
