"""A broker run as a child process on loopback: started, awaited until it answers, stopped.

Each kind of broker (embedded Tansu, Apache Kafka from its jars) says how to prepare and
launch itself; this class keeps the lifecycle the same for both: the port checked first, a
log kept for the error message, readiness by an answered request, SIGTERM then SIGKILL.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import IO

from ..errors import BrokerStartFailed
from ..processes import die_with_parent
from .ports import check_port_free
from .probe import answers_api_versions

log = logging.getLogger(__name__)


class BrokerProcess:
    """One broker process; ``start()`` returns once it answers, ``stop()`` ends it."""

    #: what the broker is called in messages ("embedded broker", "Apache Kafka broker")
    name = "broker"
    #: how long a graceful stop may take before SIGKILL
    stop_timeout = 10.0

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
    def idempotence(self) -> bool:
        """Whether idempotent producers work on this broker."""
        return True

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- what each kind of broker says -------------------------------------------------

    def _prepare(self) -> None:
        """Checks and set-up before launching (binaries, storage); raise to refuse."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _log_file(self) -> IO[bytes]:
        """Where the process's output goes; read back for error messages."""
        return open(os.devnull, "w+b")  # noqa: SIM115 - closed in stop()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> BrokerProcess:
        check_port_free(self.host, self.port, self.name, "--broker-port")
        self._prepare()
        self._log = self._log_file()
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            # Its own session: a terminal's Ctrl-C reaches the clients, which shut down
            # through the broker, and the broker is stopped last by whoever started it.
            start_new_session=True,
            env=self._environment(),
        )
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        log.info(
            "%s listening on %s (pid %d)", self.name, self.bootstrap_servers, self._process.pid
        )
        return self

    def _wait_until_answering(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerStartFailed(
                    f"the {self.name} exited with code {self._process.returncode}: "
                    f"{self.tail_of_log()}"
                )
            if answers_api_versions(self.host, self.port, timeout=0.5):
                return
            time.sleep(0.05)
        raise BrokerStartFailed(
            f"the {self.name} did not answer on {self.bootstrap_servers} within "
            f"{self.start_timeout:.0f} s: {self.tail_of_log()}"
        )

    def tail_of_log(self, lines: int = 5) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after ``stop_timeout``; idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "the %s did not stop within %.0f s; killing it", self.name, self.stop_timeout
                )
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def log_path_file(path: Path) -> IO[bytes]:
    """A log file that starts empty at each start and is kept after the broker stops."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w+b")  # noqa: SIM115 - closed by BrokerProcess.stop()
