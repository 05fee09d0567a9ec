"""Logging set-up of every command, with repeats rate-limited, readable or JSON.

A line about a request carries its ``request_id``, ``priority``, ``model``, ``worker`` and
``slot`` (``about(...)`` makes them, as the ``extra`` of a logging call): appended as
``key=value`` to a readable line, as fields of a JSON line (``INFERENCE_LOG_FORMAT=json``).

A broker that goes away makes each Kafka client log a connection error per attempt:
hundreds of lines a second across a worker and a bridge. ``RateLimit`` lets each message
(by logger and template, whatever its arguments) through at most once per interval and
says how many it held back the next time it lets one through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

#: the fields a line about a request carries, in this order
FIELDS = ("request_id", "priority", "model", "worker", "slot")

#: the least time between two lines of the same message
REPEAT_INTERVAL_S = 5.0


class RateLimit(logging.Filter):
    def __init__(self, interval: float = REPEAT_INTERVAL_S):
        super().__init__()
        self.interval = interval
        # (logger, template) -> (when last let through, how many held back since)
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        last, held = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.interval:
            self._seen[key] = (last, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {now - last:.0f} s)"
        return True


def loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An event loop's handler of errors nobody awaited: one line for aiokafka's background
    tasks (they end with the connection errors of a broker that went away, often as the
    process stops), the default report with its traceback for anything else."""
    future = context.get("future")
    coro = future.get_coro() if isinstance(future, asyncio.Task) else None
    code = getattr(coro, "cr_code", None)
    if code is not None and f"{os.sep}aiokafka{os.sep}" in code.co_filename:
        logging.getLogger("aiokafka").warning(
            "background task %s ended: %r", code.co_qualname, context.get("exception")
        )
        return
    loop.default_exception_handler(context)


def about(
    request_id: str | None,
    priority: object = None,
    model: str | None = None,
    worker: str | None = None,
    slot: object = None,
) -> dict[str, Any]:
    """The ``extra`` of a logging call about a request (fields left out when unknown)."""
    values = dict(request_id=request_id, priority=priority, model=model, worker=worker, slot=slot)
    return {k: str(v) for k, v in values.items() if v is not None}


def _fields(record: logging.LogRecord) -> Mapping[str, str]:
    return {k: getattr(record, k) for k in FIELDS if hasattr(record, k)}


class Readable(logging.Formatter):
    """``time LEVEL logger: message``, then the request's fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


class Json(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``message``, the request's
    fields, ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def handler(fmt: str | None = None) -> logging.Handler:
    """The one stderr handler of every command: readable or JSON lines (``fmt``, else
    ``INFERENCE_LOG_FORMAT``), repeats held back."""
    fmt = (fmt or os.environ.get("INFERENCE_LOG_FORMAT") or "text").lower()
    stream = logging.StreamHandler(sys.stderr)
    formatter = Json() if fmt == "json" else Readable()
    if fmt == "json":
        formatter.converter = time.gmtime
    stream.setFormatter(formatter)
    stream.addFilter(RateLimit())
    return stream


def quiet_libraries() -> None:
    """aiokafka's own chatter from WARNING up; httpx's line per request (an ``openai``
    pool's health check every few seconds, forever) only when debugging."""
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def dict_config(level: str) -> dict[str, Any]:
    """The same handler as a ``logging.config.dictConfig`` (for faust, which sets up
    logging itself)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"default": {"()": handler}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def configure(level: str, fmt: str | None = None) -> None:
    """Lines on stderr, readable or JSON (``fmt``, else ``INFERENCE_LOG_FORMAT``)."""
    logging.basicConfig(level=level.upper(), handlers=[handler(fmt)])
    quiet_libraries()
