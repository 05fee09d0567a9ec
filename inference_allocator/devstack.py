"""``inference-allocator dev``: broker, worker and bridge as one supervised group."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from .brokers import EmbeddedBroker, check_port_free
from .config import Settings
from .errors import AllocatorError
from .processes import spawn_cli, stop_gracefully
from .topics import ensure_topics


def run_dev(settings: Settings, host: str, port: int, broker_port: int) -> int:
    """Start everything, wait for Ctrl-C or SIGTERM or a child dying, stop everything."""
    check_port_free(host, port, "bridge", "--port")
    broker: EmbeddedBroker | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
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
        children["worker"] = spawn_cli("worker", env=env)
        children["bridge"] = spawn_cli("bridge", "--host", host, "--port", str(port), env=env)
        print(
            f"inference allocator: http://{host}:{port}/api/v1/inference "
            f"(status: /api/v1/status); Ctrl-C stops everything",
            file=sys.stderr,
        )
        while not stop_requested:
            for name, child in children.items():
                if child.poll() is not None:
                    raise AllocatorError(
                        f"the {name} process exited with code {child.returncode}; "
                        "stopping the stack"
                    )
            time.sleep(0.2)
        return 0
    finally:
        for child in reversed(children.values()):
            stop_gracefully(child)
        if broker is not None:
            broker.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
