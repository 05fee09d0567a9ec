"""Logging set-up of every command, with repeats rate-limited.

A broker that goes away makes each Kafka client log a connection error per attempt:
hundreds of lines a second across a worker and a bridge. ``RateLimit`` lets each message
(by logger and template, whatever its arguments) through at most once per interval and
says how many it held back the next time it lets one through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

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


def configure(level: str) -> None:
    """Readable lines on stderr; aiokafka's own chatter from WARNING up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RateLimit())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
