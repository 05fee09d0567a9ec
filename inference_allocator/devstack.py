"""``inference-allocator dev``: broker, worker and bridge as one supervised group."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

from .broker import EmbeddedBroker, _die_with_parent, check_port_free
from .config import Settings
from .errors import AllocatorError
from .topics import ensure_topics

log = logging.getLogger(__name__)


def _spawn(command: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "inference_allocator", command, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_dev(settings: Settings, host: str, port: int, broker_port: int) -> int:
    """Start everything, wait for Ctrl-C or SIGTERM or a child dying, stop everything."""
    check_port_free(host, port, "bridge")
    broker: EmbeddedBroker | None = None
    children: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if settings.embedded:
            settings = settings.model_copy(update={"broker_port": broker_port})
            broker = EmbeddedBroker(broker_port).start()
            env["INFERENCE_BROKER_PORT"] = str(broker_port)
        asyncio.run(ensure_topics(settings))
        print(f"kafka: {settings.bootstrap_servers}", file=sys.stderr)
        children.append(_spawn("worker", [], env))
        children.append(_spawn("bridge", ["--host", host, "--port", str(port)], env))
        print(
            f"inference allocator: http://{host}:{port}/api/v1/inference "
            f"(status: /api/v1/status); Ctrl-C stops everything",
            file=sys.stderr,
        )
        while not stop_requested:
            for child in children:
                if child.poll() is not None:
                    raise AllocatorError(
                        f"the {child.args[3]} process exited with code {child.returncode}; "
                        "stopping the stack"
                    )
            time.sleep(0.2)
        return 0
    finally:
        for child in reversed(children):
            _stop(child)
        if broker is not None:
            broker.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
