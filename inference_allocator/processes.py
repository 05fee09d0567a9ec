"""Child processes: started so that they die with their parent, stopped gracefully; and
``ManagedProcess``, the lifecycle of a server we start and wait for (brokers, model server)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from typing import IO

from .errors import AllocatorError
from .ports import check_port_free

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when its parent dies, even by SIGKILL (Linux),
    so an interrupted test run or ``dev`` never leaves a process behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Run ``inference-allocator ARGS`` with this interpreter."""
    return spawn_module("inference_allocator", *args, env=env)


def spawn_module(module: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Run ``python -m MODULE ARGS`` with this interpreter."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )


def stop_gracefully(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ManagedProcess:
    """A server we start on ``host:port``: ``start()`` returns once ``_ready()``, ``stop()``
    sends SIGTERM then SIGKILL. Subclasses say how to prepare, launch and probe it."""

    #: what the process is called in messages
    name = "process"
    #: how long a graceful stop may take before SIGKILL
    stop_timeout = 10.0
    #: the error raised when it exits early or is not ready in time (one per kind)
    start_error: type[AllocatorError] = AllocatorError

    def __init__(self, port: int, host: str, start_timeout: float, *, flag: str):
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self.flag = flag  # the option that chooses the port, named when it is taken
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def exit_code(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return self._process.poll() if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- what each kind says -----------------------------------------------------------

    def _prepare(self) -> None:
        """Checks and set-up before launching (binaries, storage); raise to refuse."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _log_file(self) -> IO[bytes]:
        """Where the process's output goes; read back for error messages."""
        return open(os.devnull, "w+b")  # noqa: SIM115 - closed in stop()

    def _ready(self) -> bool:
        raise NotImplementedError

    # --- lifecycle ---------------------------------------------------------------------

    def start(self):  # type: ignore[no-untyped-def]  # returns self, typed per subclass
        check_port_free(self.host, self.port, self.name, self.flag)
        self._prepare()
        self._log = self._log_file()
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            # Its own session: a terminal's Ctrl-C reaches the clients, which shut down
            # through the server, and the server is stopped last by whoever started it.
            start_new_session=True,
            env=self._environment(),
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        log.info("%s listening on %s:%d (pid %d)", self.name, self.host, self.port,
                 self._process.pid)  # fmt: skip
        return self

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise self.start_error(
                    f"the {self.name} exited with code {self._process.returncode}: "
                    f"{self.tail_of_log()}"
                )
            if self._ready():
                return
            time.sleep(0.05)
        raise self.start_error(
            f"the {self.name} did not answer on {self.host}:{self.port} within "
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
                log.warning("the %s did not stop within %.0f s; killing it", self.name,
                            self.stop_timeout)  # fmt: skip
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL, as a crash would; for fault tests."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self.stop()

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
