"""A broker run as a child process on loopback: the ``ManagedProcess`` lifecycle, ready when
an ApiVersions request is answered (Apache Kafka binds its port before it serves requests)."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from ..errors import BrokerStartFailed
from ..processes import ManagedProcess
from .probe import answers_api_versions


class BrokerProcess(ManagedProcess):
    """One broker process; ``start()`` returns once it answers, ``stop()`` ends it."""

    name = "broker"
    start_error = BrokerStartFailed

    def __init__(self, port: int, host: str = "127.0.0.1", start_timeout: float = 20.0):
        super().__init__(port, host, start_timeout, flag="--broker-port")

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _ready(self) -> bool:
        return answers_api_versions(self.host, self.port, timeout=0.5)


def log_path_file(path: Path) -> IO[bytes]:
    """A log file that starts empty at each start and is kept after the broker stops."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w+b")  # noqa: SIM115 - closed by BrokerProcess.stop()
