"""The statistics agent: faust-streaming reads ``<prefix>.responses`` and keeps tumbling-window
tables per model and priority; each closed window is published to ``<prefix>.stats``.

This is where faust's windowed tables beat hand-written code: windows by the answers' own
timestamps, table state kept in changelog topics (a restarted agent recovers its open
windows), the answers repartitioned by model and priority so that each key's window is
whole on one member, and several agents sharing the work as a consumer group. The
dispatcher stays on aiokafka: faust's stream pipeline buffers records per stream in FIFO
order, which would break priority at dispatch time (see the README's design notes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import faust
from pydantic import ValidationError

from .. import logs
from ..cache import default_cache_dir
from ..clients import connection_options
from ..config import Settings
from ..schemas import ResponseRecord
from ..topics import Topics, ensure_topics
from .windows import add, summary

log = logging.getLogger(__name__)


class _EveryWindowCloses(faust.Table):  # type: ignore[misc]
    """faust's table, with every expired window closed.

    faust-streaming (0.15) keeps one ``last_closed_window`` per table and closes a window
    only if it starts after it: once one key's window closed, another key's window with the
    same start, on another partition, was never closed (measured: of ``m/high`` and
    ``n/low`` in the same 2 s, only one was published). Each expired key is still closed
    once (faust pops it as it closes it); after a restart, a window recovered from the
    changelog may be published again.
    """

    @property
    def last_closed_window(self) -> float:
        return 0.0

    @last_closed_window.setter
    def last_closed_window(self, value: float) -> None:
        pass


def _key(value: bytes) -> str:
    """``model/priority`` of an answer (``-`` for what it does not say)."""
    try:
        data = json.loads(value)
    except (ValueError, TypeError):
        return "-/-"
    if not isinstance(data, dict):
        return "-/-"
    return f"{data.get('model_id') or '-'}/{data.get('priority') or '-'}"


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The deployment's TLS and SASL settings as faust takes them (its aiokafka clients are
    built by faust, from these): the same SSL context and SASL user as every other
    client's (``clients.connection_options``)."""
    ssl_context = connection_options(settings).get("ssl_context")
    if settings.kafka_sasl_mechanism:
        assert settings.kafka_sasl_password is not None  # Settings checks it
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


def build_app(settings: Settings, started_at: float | None = None) -> faust.App:
    """The faust app of one deployment (its id is ``<prefix>.stats``, its consumer group)."""
    topics = Topics.from_settings(settings)
    started_at = started_at or time.monotonic()
    datadir = Path(default_cache_dir()) / "stats" / settings.topic_prefix
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}.stats",
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.response_partitions,
        topic_replication_factor=settings.replication_factor,
        table_cleanup_interval=1.0,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        broker_commit_interval=1.0,
        web_enabled=False,
        key_serializer="json",  # the tables': model/priority -> window counts
        value_serializer="json",
    )
    answers = app.topic(topics.responses, key_serializer="raw", value_serializer="raw")
    stats = app.topic(topics.stats, key_serializer="raw", value_serializer="raw")
    tables = []
    for seconds in settings.stats_windows():
        name = f"{seconds:g}s"

        async def publish(key: Any, value: Any, name: str = name, seconds: float = seconds) -> None:
            (model_priority, (start, _)) = key  # faust's end is start + size - 0.1
            record = summary(model_priority, name, start, seconds, value or {})
            await stats.send(
                key=f"{model_priority}/{name}".encode(), value=json.dumps(record).encode()
            )

        table = _EveryWindowCloses(
            app,
            name=f"answers-{name}",
            default=dict,
            beacon=app.tables.beacon,
            partitions=settings.response_partitions,
            on_window_close=publish,
        )
        app.tables.add(table)
        # Windows by the answers' timestamps; one is closed (and published) once its end
        # is a window's length in the past, checked every table_cleanup_interval.
        tables.append(table.tumbling(seconds, expires=seconds).relative_to_stream())

    @app.agent(answers)
    async def count(stream: Any) -> None:
        async for value in stream.group_by(_key, name="by-model-priority"):
            try:
                response = ResponseRecord.model_validate_json(value)
            except ValidationError:
                continue
            key = _key(value)
            for table in tables:
                table[key] = add(table[key].value(), response)

    @app.on_rebalance_complete.connect
    async def ready(app: faust.App, **kwargs: Any) -> None:
        windows = ", ".join(f"{s:g} s" for s in settings.stats_windows())
        print(
            f"stats: windows of {windows} per model and priority, from {topics.responses} "
            f"to {topics.stats}; ready {time.monotonic() - started_at:.1f} s after start",
            file=sys.stderr,
            flush=True,
        )

    return app


def run(settings: Settings, loglevel: str = "warning") -> None:
    """Run the agent until SIGINT/SIGTERM."""
    started_at = time.monotonic()
    asyncio.run(ensure_topics(settings))  # the stats topic, with the others
    app = build_app(settings, started_at)
    # faust's own INFO lines are its internals' every step: from WARNING up unless debugging
    level = "debug" if loglevel == "debug" else "warning"
    # faust sets up logging itself: with the handler every command uses (JSON lines too)
    worker = faust.Worker(app, loglevel=level, quiet=True, logging_config=logs.dict_config(level))
    # Its start-up spinner hides and shows the terminal's cursor with escape codes even
    # when stderr is not a terminal (they showed in every log of `dev`).
    worker.spinner = None
    threading.excepthook = _thread_ended
    worker.execute_from_commandline()


def _thread_ended(args: threading.ExceptHookArgs) -> None:
    """faust's consumer thread, stopped while aiokafka retries a fetch (its broker gone),
    ends with the ``CancelledError`` of that retry (aiokafka's ``Fetcher.close`` awaits the
    task it cancelled): one line for that, not a traceback (`dev` stopping because its
    broker died printed one in about a third of the runs)."""
    if args.exc_type is not None and issubclass(args.exc_type, asyncio.CancelledError):
        log.warning("stats: %s stopped while fetching from a broker that was gone",
                    args.thread.name if args.thread else "a thread")  # fmt: skip
        return
    threading.__excepthook__(args)
