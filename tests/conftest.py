"""Fixtures as a chain: broker -> bootstrap address -> Settings -> worker / bridge / clients.

The broker is ``INFERENCE_TEST_BOOTSTRAP_SERVERS`` if set, else ``INFERENCE_TEST_BROKER``:
``embedded`` (the default: Tansu on a free port), ``apache-kafka`` (Apache Kafka 4.x from
its jars on a free port, fetched once into the cache) or ``testcontainers`` (Apache Kafka
in Docker). Every test gets its own topic prefix and consumer group, so tests never share
state. Tests marked ``apache_kafka`` or ``embedded`` need that broker and are skipped on the
other. A missing tool (Java, Maven, Docker) skips with the reason, or fails the run where
``INFERENCE_TEST_STRICT=1`` (CI), so CI cannot pass by skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer

from inference_allocator.bridge.app import create_app
from inference_allocator.brokers import ApacheKafkaBroker, EmbeddedBroker, free_port
from inference_allocator.config import Settings
from inference_allocator.errors import BrokerToolMissing
from inference_allocator.streams.worker import Worker

from .helpers import wait_for


@dataclass(frozen=True)
class TestBroker:
    bootstrap_servers: str
    idempotence: bool
    kind: str


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    """A developer's own INFERENCE_* variables must not change what the tests see."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("INFERENCE_")}
    for key in saved:
        if not key.startswith("INFERENCE_TEST_"):
            del os.environ[key]
    yield
    os.environ.update(saved)


def _docker_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


BROKER_KINDS = ("embedded", "apache-kafka", "testcontainers")


def broker_kind() -> str:
    """The kind of broker this run tests against (``external`` for a given address)."""
    if os.environ.get("INFERENCE_TEST_BOOTSTRAP_SERVERS"):
        return "external"
    kind = os.environ.get("INFERENCE_TEST_BROKER", "embedded")
    if kind not in BROKER_KINDS:
        raise pytest.UsageError(f"INFERENCE_TEST_BROKER={kind!r}: choose one of {BROKER_KINDS}")
    return kind


def missing_tool(reason: str) -> None:
    """Skip for a tool this machine lacks; in strict runs (CI) that is a failure."""
    if os.environ.get("INFERENCE_TEST_STRICT") == "1":
        pytest.fail(f"INFERENCE_TEST_STRICT=1 and {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_report_header(config: pytest.Config) -> str:
    return f"inference-allocator test broker: {broker_kind()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kind = broker_kind()
    for item in items:
        if "apache_kafka" in item.keywords and kind not in ("apache-kafka", "testcontainers"):
            item.add_marker(pytest.mark.skip(reason="Apache Kafka only: run `make test-kafka`"))
        if "embedded" in item.keywords and kind != "embedded":
            item.add_marker(pytest.mark.skip(reason="embedded broker only: run `make test`"))


@pytest.fixture(scope="session")
def broker(
    _clean_environment: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestBroker]:
    kind = broker_kind()
    if kind == "external":
        external = os.environ["INFERENCE_TEST_BOOTSTRAP_SERVERS"]
        idempotent = os.environ.get("INFERENCE_TEST_IDEMPOTENCE", "false").lower() == "true"
        yield TestBroker(external, idempotent, "external")
    elif kind == "testcontainers":
        if not _docker_answers():
            missing_tool("INFERENCE_TEST_BROKER=testcontainers needs a Docker engine")
        from testcontainers.community.kafka import KafkaContainer

        # Confluent Platform 8.1 is Apache Kafka 4.1, the line the jars path runs.
        with KafkaContainer("confluentinc/cp-kafka:8.1.0").with_kraft() as kafka:
            yield TestBroker(kafka.get_bootstrap_server(), True, "testcontainers")
    elif kind == "apache-kafka":
        with apache_kafka_or_skip(tmp_path_factory.mktemp("kafka")) as kafka:
            yield TestBroker(kafka.bootstrap_servers, True, "apache-kafka")
    else:
        with EmbeddedBroker(free_port()) as embedded:
            yield TestBroker(embedded.bootstrap_servers, False, "embedded")


@contextlib.contextmanager
def apache_kafka_or_skip(
    data_dir: Path, port: int | None = None, **options: Any
) -> Iterator[ApacheKafkaBroker]:
    """Apache Kafka on ``port`` (a free one by default) with its data in ``data_dir``;
    ``options`` go to ``ApacheKafkaBroker`` (``sasl_users``, ``sasl_port``)."""
    kafka = ApacheKafkaBroker(port or free_port(), data_dir, **options)
    try:
        kafka.start()
    except BrokerToolMissing as exc:
        missing_tool(str(exc))
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
def make_settings(broker: TestBroker) -> Callable[..., Settings]:
    """Settings on the test broker under a fresh topic prefix; keywords override."""
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_enable_idempotence=broker.idempotence,
            topic_prefix=prefix,
            mock_latency_ms=20,
            request_timeout_seconds=20,
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def start_worker() -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Start workers (stopped at teardown); returns once the worker owns its partitions."""
    workers: list[Worker] = []

    async def start(settings: Settings, **kwargs: Any) -> Worker:
        worker = Worker(settings, **kwargs)
        await worker.start()
        workers.append(worker)
        await wait_for(lambda: len(worker.assignment()) > 0, "the worker to join its group")
        return worker

    yield start
    for worker in reversed(workers):
        await worker.stop()


@pytest.fixture
async def start_bridge() -> AsyncIterator[Callable[[Settings], Awaitable[httpx.AsyncClient]]]:
    """Serve bridges with uvicorn on free ports; returns an HTTP client for each."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None], httpx.AsyncClient]] = []

    async def start(settings: Settings) -> httpx.AsyncClient:
        port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning"
        )
        server = uvicorn.Server(config)
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve())
        await wait_for(lambda: server.started or task.done(), "the bridge to start")
        if task.done():
            task.result()
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
        running.append((server, task, client))
        return client

    yield start
    for server, task, client in reversed(running):
        await client.aclose()
        server.should_exit = True
        await task


@pytest.fixture
async def kafka_producer(broker: TestBroker) -> AsyncIterator[AIOKafkaProducer]:
    """A plain Kafka producer, as any client outside this project would use."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    yield producer
    await producer.stop()
