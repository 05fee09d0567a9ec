"""What a benchmark scenario runs on: a broker, and worker and bridge processes (the real
stack's, or the thinnest pipeline's)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..brokers import ApacheKafkaBroker, EmbeddedBroker, free_port
from ..config import Settings
from ..processes import spawn_cli, spawn_module, stop_gracefully

_THIN = "inference_allocator.bench.thin"


BROKER_CHOICES = ("embedded", "apache-kafka", "both")


@dataclass
class BenchBroker:
    """The broker the scenarios of one column run on."""

    bootstrap_servers: str
    idempotence: bool | None  # None: auto (probed)
    kind: str
    pid: int | None = None  # None: started by somebody else

    @classmethod
    @contextlib.contextmanager
    def start(cls, choice: str, settings: Settings) -> Iterator[BenchBroker]:
        """``embedded``, ``apache-kafka`` (a fresh data directory, removed after), or
        ``external`` (``INFERENCE_KAFKA_BOOTSTRAP_SERVERS``, started by somebody else)."""
        if choice == "external":
            yield cls(settings.bootstrap_servers, settings.kafka_enable_idempotence, "external")
        elif choice == "apache-kafka":
            version = settings.apache_kafka_version
            with (
                tempfile.TemporaryDirectory(prefix="bench-kafka-") as data,
                ApacheKafkaBroker(free_port(), Path(data), version=version) as kafka,
            ):
                yield cls(kafka.bootstrap_servers, True, f"Apache Kafka {version}", kafka.pid)
        else:
            with EmbeddedBroker(free_port()) as embedded:
                yield cls(embedded.bootstrap_servers, False, "embedded (Tansu)", embedded.pid)


@dataclass
class Scenario:
    """One scenario's settings: a fresh topic prefix on the shared broker."""

    broker: BenchBroker
    gpu_count: int
    latency_ms: float
    fleet_file: str | None = None
    prefix: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}")
    extra: dict[str, object] = field(default_factory=dict)  # more settings

    def overrides(self) -> dict[str, object]:
        fleet = {"fleet_file": self.fleet_file} if self.fleet_file else {}
        return {
            **fleet,
            "kafka_bootstrap_servers": self.broker.bootstrap_servers,
            "kafka_enable_idempotence": self.broker.idempotence,
            "topic_prefix": self.prefix,
            "gpu_count": self.gpu_count,
            "mock_latency_ms": self.latency_ms,
            "queue_max_size": 1_000_000,
            "request_timeout_seconds": 300,
            "worker_buffer_per_priority": max(256, 4 * self.gpu_count),
            # Shorter group joins: Tansu makes a join wait half the session timeout.
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 500,
            **self.extra,
        }

    def settings(self) -> Settings:
        return Settings(**self.overrides())

    def env(self) -> dict[str, str]:
        return {
            f"INFERENCE_{name.upper()}": str(value).lower()
            if isinstance(value, bool)
            else str(value)
            for name, value in self.overrides().items()
        }

    @contextlib.contextmanager
    def processes(
        self, *, bridge_port: int | None = None, thin: bool = False, stats: bool = False
    ) -> Iterator[dict[str, int]]:
        """A worker process, and a bridge process when ``bridge_port`` is given; with
        ``thin``, those of the thinnest pipeline (``bench/thin.py``) instead; with
        ``stats``, the statistics agent too. Yields their pids by name."""
        env = {**os.environ, **self.env()}
        if thin:
            children = [spawn_module(_THIN, "worker", env=env)]
            if bridge_port is not None:
                children.append(spawn_module(_THIN, "bridge", "--port", str(bridge_port), env=env))
        else:
            children = [spawn_cli("--log-level", "warning", "worker", env=env)]
            if bridge_port is not None:
                children.append(
                    spawn_cli(
                        "--log-level", "warning", "bridge", "--port", str(bridge_port), env=env
                    )
                )
            if stats:
                children.append(spawn_cli("--log-level", "warning", "stats", env=env))
        names = ["worker", "bridge" if bridge_port is not None else "stats", "stats"]
        try:
            yield {name: child.pid for name, child in zip(names, children, strict=False)}
        finally:
            for child in children:
                stop_gracefully(child, timeout=20)
