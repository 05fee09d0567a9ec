"""The real stack a benchmark scenario runs on: broker, worker and bridge processes."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..brokers import EmbeddedBroker, free_port
from ..config import Settings
from ..processes import spawn_cli, stop_gracefully


@dataclass
class BenchBroker:
    """The broker of a whole run: ``INFERENCE_KAFKA_BOOTSTRAP_SERVERS`` or an embedded one."""

    bootstrap_servers: str
    idempotence: bool | None  # None: auto (probed)
    kind: str
    _embedded: EmbeddedBroker | None = None

    @classmethod
    @contextlib.contextmanager
    def start(cls, settings: Settings) -> Iterator[BenchBroker]:
        if not settings.embedded:
            yield cls(settings.bootstrap_servers, settings.kafka_enable_idempotence, "external")
            return
        with EmbeddedBroker(free_port()) as broker:
            yield cls(broker.bootstrap_servers, False, "embedded (Tansu)", broker)


@dataclass
class Scenario:
    """One scenario's settings: a fresh topic prefix on the shared broker."""

    broker: BenchBroker
    gpu_count: int
    latency_ms: float
    prefix: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}")

    def overrides(self) -> dict[str, object]:
        return {
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
    def processes(self, *, bridge_port: int | None = None) -> Iterator[None]:
        """A worker process, and a bridge process when ``bridge_port`` is given."""
        env = {**os.environ, **self.env()}
        children = [spawn_cli("--log-level", "warning", "worker", env=env)]
        if bridge_port is not None:
            children.append(
                spawn_cli("--log-level", "warning", "bridge", "--port", str(bridge_port), env=env)
            )
        try:
            yield
        finally:
            for child in children:
                stop_gracefully(child, timeout=20)
