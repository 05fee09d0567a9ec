"""Following the answers on the responses topic as they come (``inference-allocator tail``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from pydantic import ValidationError

from ..clients import answers_isolation, assigned_consumer, fetch_pace
from ..config import Settings
from ..schemas import ResponseRecord, now_ms
from ..topics import Topics, ensure_topics
from .results import seek_since

log = logging.getLogger(__name__)


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
                    show(record.value, response)
