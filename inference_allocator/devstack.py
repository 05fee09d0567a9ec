"""``inference-allocator dev``: broker, worker, bridge and the statistics agent as one
supervised group."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request

from .brokers import ApacheKafkaBroker, BrokerProcess, EmbeddedBroker, check_port_free
from .config import DEFAULT_BROKER_PORT, Settings
from .errors import AllocatorError, ConfigurationError
from .processes import spawn_cli, stop_gracefully
from .topics import ensure_topics

# A worker stops within ~11 s (drain, then bounded Kafka steps); past this it is killed.
_CHILD_STOP_S = 12.0


def broker_lost(broker: BrokerProcess, args: argparse.Namespace) -> str:
    """The line ``dev`` ends with when its broker process dies under it."""
    code = broker.exit_code
    if isinstance(broker, EmbeddedBroker):
        return (
            f"the embedded broker exited (code {code}); what it held was in memory and is "
            "gone, so the stack stops: run `inference-allocator dev` again"
        )
    return (
        f"the {broker.name} exited (code {code}); its data is kept in "
        f"{getattr(broker, 'data_dir', args.data_dir)}: stopping the stack, run `dev` again"
    )


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def make_broker(args: argparse.Namespace, settings: Settings) -> BrokerProcess:
    """The broker that ``broker`` and ``dev`` start: embedded, or ``--apache-kafka``."""
    if args.apache_kafka:
        return ApacheKafkaBroker(
            args.broker_port, args.data_dir, version=settings.apache_kafka_version
        )
    if args.data_dir is not None:
        raise ConfigurationError(
            "--data-dir goes with --apache-kafka: the embedded broker keeps nothing on disk"
        )
    return EmbeddedBroker(args.broker_port)


def run_dev(settings: Settings, args: argparse.Namespace) -> int:
    """Start everything, wait for Ctrl-C or SIGTERM or a child dying, stop everything."""
    host, port = args.host, args.port
    check_port_free(host, port, "bridge", "--port")
    if not settings.embedded and args.apache_kafka:
        raise ConfigurationError(
            "--apache-kafka starts a broker, but INFERENCE_KAFKA_BOOTSTRAP_SERVERS names one "
            f"({settings.bootstrap_servers}); unset it or drop --apache-kafka"
        )
    broker: BrokerProcess | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    env = dict(os.environ)
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if settings.embedded:
            broker = make_broker(args, settings).start()
            if isinstance(broker, EmbeddedBroker):
                settings = settings.model_copy(update={"broker_port": broker.port})
                env["INFERENCE_BROKER_PORT"] = str(broker.port)
            else:  # the worker and bridge see an external Kafka, and probe idempotence
                settings = settings.model_copy(
                    update={"kafka_bootstrap_servers": broker.bootstrap_servers}
                )
                env["INFERENCE_KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
        asyncio.run(ensure_topics(settings))
        print(f"kafka: {settings.bootstrap_servers}", file=sys.stderr)
        children["worker"] = spawn_cli("worker", env=env)
        children["bridge"] = spawn_cli("bridge", "--host", host, "--port", str(port), env=env)
        if not getattr(args, "no_stats", False):
            children["stats"] = spawn_cli("stats", env=env)

        def check() -> None:
            if broker is not None and not broker.running:
                raise AllocatorError(broker_lost(broker, args))
            for name, child in children.items():
                if child.poll() is not None:
                    raise AllocatorError(
                        f"the {name} process exited with code {child.returncode}; "
                        "stopping the stack"
                    )

        # Ready means the bridge answers and a worker has joined and announced its slots:
        # the first request does not wait for the group to form.
        ready = f"http://{host}:{port}/readyz"
        while not stop_requested and not _answers_200(ready):
            check()
            time.sleep(0.1)
        if not stop_requested:
            print(
                f"inference allocator: http://{host}:{port}/api/v1/inference "
                f"(status: /api/v1/status); Ctrl-C stops everything",
                file=sys.stderr,
            )
            if settings.bootstrap_servers != f"127.0.0.1:{DEFAULT_BROKER_PORT}":
                # submit, status and tail dial 9092 unless told: say how once, here
                print(
                    "other commands reach this stack with "
                    f"INFERENCE_KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}",
                    file=sys.stderr,
                )
        while not stop_requested:
            check()
            time.sleep(0.2)
        return 0
    finally:
        for child in reversed(children.values()):
            stop_gracefully(child, timeout=_CHILD_STOP_S)
        if broker is not None:
            broker.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
