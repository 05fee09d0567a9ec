"""Following the answers on the responses topic as they come (``inference-allocator tail``)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from ..clients import answers_isolation, assigned_consumer, fetch_pace
from ..config import Settings
from ..schemas import ResponseRecord, now_ms
from ..topics import Topics, ensure_topics
from .results import caught_up, seek_since

log = logging.getLogger(__name__)

#: how long ``--since`` reads back before it shows what it has (a broker that does not say
#: where a partition ends must not hold the answers back for good)
REPLAY_TIMEOUT_S = 10.0


async def follow_answers(
    settings: Settings,
    show: Callable[[bytes, ResponseRecord], None],
    since_seconds: float = 0.0,
) -> None:
    """Give every answer (its raw value and the record decoded) to ``show``, from now on
    (or from ``since_seconds`` ago), until cancelled. An undecodable record is logged and
    skipped."""
    await ensure_topics(settings)
    topic = Topics.from_settings(settings).responses
    async with contextlib.AsyncExitStack() as stack:
        consumer, tps = await assigned_consumer(
            settings, topic, stack, isolation_level=answers_isolation(settings)
        )
        await seek_since(consumer, tps, settings, since_seconds)
        oldest = now_ms() - int(since_seconds * 1000)
        log.info(
            "following the answers on %s from %s",
            topic,
            f"{since_seconds:g} s back" if since_seconds > 0 else "now",
        )
        pace = await fetch_pace(settings)
        pace.follow(consumer)
        # The window asked for is read back whole, then shown in time order (each partition
        # is in order, but they are read one after another), then answers as they come.
        replay: list[tuple[int, bytes, ResponseRecord]] | None = [] if since_seconds > 0 else None
        replay_until = time.monotonic() + REPLAY_TIMEOUT_S
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            if batch:
                pace.stir()
            else:
                pace.settle()
            for records in batch.values():
                for record in records:
                    if record.timestamp < oldest or record.value is None:
                        continue
                    try:
                        response = ResponseRecord.model_validate_json(record.value)
                    except ValidationError as exc:
                        log.warning("a malformed answer: %s", exc.errors()[0]["msg"])
                        continue
                    if replay is None:
                        show(record.value, response)
                    else:
                        replay.append((record.timestamp, record.value, response))
            if replay is not None and (
                await caught_up(consumer, tps) or time.monotonic() > replay_until
            ):
                replay.sort(key=lambda entry: entry[0])
                for _, value, response in replay:
                    show(value, response)
                replay = None
