"""Kafka client factories: every producer and consumer is built from ``Settings`` here."""

from __future__ import annotations

import contextlib
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from .config import Settings
from .errors import BrokerUnavailable


def crc32_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Key -> partition by CRC32 (C speed), random without a key.

    aiokafka's default is Java's murmur2 in pure Python, ~4 us a record on the hot path.
    Nothing here needs Java-compatible placement: workers read whole topics by group and
    readers read every response partition.
    """
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[zlib.crc32(key) % len(all_partitions)]


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=settings.idempotence,
        linger_ms=0,
        request_timeout_ms=15_000,
        partitioner=crc32_partitioner,
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer that never auto-commits; callers subscribe or assign."""
    options: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        request_timeout_ms=max(15_000, settings.session_timeout_ms + 5_000),
    )
    options.update(overrides)
    return AIOKafkaConsumer(**options)


def unreachable(settings: Settings, exc: BaseException) -> BrokerUnavailable:
    hint = (
        "start it with `inference-allocator broker`, or set INFERENCE_KAFKA_BOOTSTRAP_SERVERS"
        if settings.embedded
        else "check INFERENCE_KAFKA_BOOTSTRAP_SERVERS"
    )
    return BrokerUnavailable(
        f"cannot reach the Kafka broker at {settings.bootstrap_servers} ({exc}); {hint}"
    )


@contextlib.asynccontextmanager
async def started(
    client: Any, settings: Settings, stop: Callable[[], Awaitable[Any]] | None = None
) -> AsyncIterator[Any]:
    """Start a client, turning an unreachable broker into ``BrokerUnavailable``; stop it after."""
    try:
        await client.start()
    except (KafkaError, OSError) as exc:  # KafkaConnectionError included
        with contextlib.suppress(Exception):
            await (stop or client.stop)()
        raise unreachable(settings, exc) from None
    try:
        yield client
    finally:
        await (stop or client.stop)()
