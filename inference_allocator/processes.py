"""Child processes: started so that they die with their parent, stopped gracefully."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys

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
