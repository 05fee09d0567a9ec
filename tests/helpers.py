"""Helpers for broker-backed tests: polling with a guard, reading topics from the start."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from inference_allocator.clients import topic_partitions
from inference_allocator.config import Settings
from inference_allocator.schemas import ResponseRecord, SlotRecord
from inference_allocator.topics import Topics

#: the command line, as a user runs it
CLI = [sys.executable, "-m", "inference_allocator"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``inference-allocator ARGS`` to its end, with ``env`` added to this environment."""
    return subprocess.run(
        [*CLI, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def wait_for(
    condition: Callable[[], object], what: str, timeout: float = 30.0, interval: float = 0.02
) -> None:
    """Poll ``condition`` (plain or async) until true; a generous guard, not a timing test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _truth(condition()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def stats_agent(
    settings: Settings, log_path: Path, **env: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``inference-allocator stats`` on the deployment of ``settings`` (2 s and 60 s windows,
    ``env`` on top), its stderr in ``log_path``, once it says it is ready; stopped with
    SIGINT on the way out (killed after 20 s)."""
    full_env = {
        **os.environ,
        **deployment_env(settings, INFERENCE_STATS_WINDOWS_SECONDS="2,60", **env),
    }
    with log_path.open("wb") as log:
        agent = await asyncio.create_subprocess_exec(*CLI, "stats", env=full_env, stderr=log)
    try:

        def up() -> bool:
            assert agent.returncode is None, log_path.read_text()
            return "ready" in log_path.read_text()

        await wait_for(up, "the statistics agent to start", timeout=90)
        yield agent
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(agent.wait(), 20)
        except TimeoutError:
            agent.kill()
            await agent.wait()


async def ready(http: Any) -> bool:
    """Whether the bridge behind an httpx client answers ``/readyz`` with 200."""
    import httpx

    try:
        return bool((await http.get("/readyz")).status_code == 200)
    except httpx.TransportError:
        return False


async def _truth(value: object) -> bool:
    return bool(await value) if inspect.isawaitable(value) else bool(value)


async def read_topic(
    settings: Settings,
    topic: str,
    count: int | None = None,
    timeout: float = 30.0,
    *,
    committed_only: bool = False,
) -> list[Any]:
    """Read ``topic`` from the beginning, all partitions: ``count`` records, or with no
    count everything up to the end (the high watermark of every partition); with
    ``committed_only``, as a ``read_committed`` consumer (no records of aborted
    transactions)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    await consumer.start()
    try:
        tps = (await topic_partitions(consumer, [topic], settings))[topic]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout

        async def done() -> bool:
            if count is not None:
                return len(records) >= count
            highs = [consumer.highwater(tp) for tp in tps]
            if any(h is None for h in highs):
                return False
            positions = [await consumer.position(tp) for tp in tps]
            return all(p >= h for p, h in zip(positions, highs, strict=True))

        while not await done():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"read {len(records)} of {count} records from {topic}")
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


async def read_responses(
    settings: Settings, count: int, timeout: float = 30.0
) -> list[ResponseRecord]:
    records = await read_topic(settings, Topics.from_settings(settings).responses, count, timeout)
    return [ResponseRecord.model_validate_json(r.value) for r in records]


async def leases(settings, request_id: str) -> int:
    """How many times a slot was leased to ``request_id`` (every lease is in the topic)."""
    records = await read_topic(settings, Topics.from_settings(settings).gpu_slots)
    slots = [SlotRecord.model_validate_json(r.value) for r in records if r.value is not None]
    # A heartbeat writes a lease again: one lease is one (slot, leased_at).
    return len(
        {
            (slot.slot_id, slot.leased_at_ms)
            for slot in slots
            if slot.state == "leased" and slot.request_id == request_id
        }
    )


async def answers_of(settings, request_id: str) -> list[ResponseRecord]:
    records = await read_topic(settings, Topics.from_settings(settings).responses)
    found = [ResponseRecord.model_validate_json(r.value) for r in records if r.value]
    return [r for r in found if r.request_id == request_id]


async def end_offsets(settings: Settings, topic: str) -> int:
    """How many records were ever written to ``topic`` (the sum of its end offsets),
    whatever compaction has removed since."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    try:
        tps = (await topic_partitions(consumer, [topic], settings))[topic]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def deployment_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The variables that put a CLI process on the same deployment as ``settings``, over
    the same listener with the same credentials."""
    idempotence = settings.kafka_enable_idempotence
    security = {
        "INFERENCE_KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
        "INFERENCE_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "INFERENCE_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "INFERENCE_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password
        and settings.kafka_sasl_password.get_secret_value(),
        "INFERENCE_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
        "INFERENCE_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
        "INFERENCE_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile,
        "INFERENCE_KAFKA_SSL_KEY_PASSWORD": settings.kafka_ssl_key_password
        and settings.kafka_ssl_key_password.get_secret_value(),
    }
    return {
        **{name: value for name, value in security.items() if value},
        "INFERENCE_KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "INFERENCE_KAFKA_ENABLE_IDEMPOTENCE": "" if idempotence is None else str(idempotence),
        "INFERENCE_TOPIC_PREFIX": settings.topic_prefix,
        "INFERENCE_GPU_COUNT": str(settings.gpu_count),
        "INFERENCE_MOCK_LATENCY_MS": str(settings.mock_latency_ms),
        "INFERENCE_LEASE_TTL_SECONDS": str(settings.lease_ttl_seconds),
        "INFERENCE_WORKER_MODE": settings.worker_mode,
        "INFERENCE_EXACTLY_ONCE": str(settings.exactly_once),
        "INFERENCE_REQUEST_PARTITIONS": str(settings.request_partitions),
        "INFERENCE_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "INFERENCE_HEARTBEAT_INTERVAL_MS": str(settings.heartbeat_interval_ms),
        **extra,
    }
