"""Token budgets per API key (``tokens_per_minute``, ``requests_per_minute``,
``tokens_per_day``), counted from the answers on the responses topic: every bridge reads
every answer, so every bridge counts the same, whichever bridge (or Kafka client) sent the
request. A key over a budget gets **429** with ``Retry-After`` and OpenAI's rate-limit
headers until enough of its use has left the window.

The windows slide: the last 60 seconds (by the second) and the last 24 hours (by the
minute), by the answers' times. An answer counts its ``usage`` (``total_tokens``, or prompt
and completion tokens) and one request. What is counted is what was answered: requests still
running are not in the count yet, so a burst sent at once can go over a budget by what it
uses; the next requests then wait until the window has room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from ..apikeys import Caller
from ..clients import assigned_consumer
from ..config import Settings
from ..consumers.results import seek_since
from ..eventloop import stop_task
from ..schemas import ResponseRecord
from ..topics import Topics

log = logging.getLogger(__name__)

MINUTE_S = 60
DAY_S = 24 * 3600


@dataclass(slots=True)
class _Use:
    """One tenant's answers: tokens and requests by second (the last minute) and tokens by
    minute (the last day)."""

    seconds: deque[list[int]] = field(default_factory=deque)  # [second, tokens, requests]
    minutes: deque[list[int]] = field(default_factory=deque)  # [minute, tokens]

    def add(self, at_s: float, tokens: int) -> None:
        second, minute = int(at_s), int(at_s // MINUTE_S)
        if self.seconds and self.seconds[-1][0] == second:
            self.seconds[-1][1] += tokens
            self.seconds[-1][2] += 1
        else:
            self.seconds.append([second, tokens, 1])
        if self.minutes and self.minutes[-1][0] == minute:
            self.minutes[-1][1] += tokens
        else:
            self.minutes.append([minute, tokens])

    def trim(self, now_s: float) -> None:
        while self.seconds and self.seconds[0][0] <= now_s - MINUTE_S:
            self.seconds.popleft()
        while self.minutes and self.minutes[0][0] <= now_s // MINUTE_S - DAY_S // MINUTE_S:
            self.minutes.popleft()


@dataclass(frozen=True, slots=True)
class Verdict:
    """A budgeted key's standing now: over a budget or not, the seconds until it may send
    again (over), and OpenAI's ``x-ratelimit-*`` headers."""

    over: bool
    retry_after_s: int
    headers: dict[str, str]
    message: str = ""


class Budgets:
    def __init__(self, callers: list[Caller], clock: Callable[[], float] = time.time):
        self.callers = {caller.name: caller for caller in callers if caller.budgeted}
        self._clock = clock
        self._use: dict[str, _Use] = {name: _Use() for name in self.callers}
        # An answer of a budgeted tenant carries this; others are not decoded.
        self._markers = [f'"tenant":"{name}"'.encode() for name in self.callers]

    def __bool__(self) -> bool:
        return bool(self.callers)

    @property
    def window_s(self) -> int:
        """How far back the answers must be read at start."""
        return DAY_S if any(c.tokens_per_day for c in self.callers.values()) else MINUTE_S

    def answered(self, response: ResponseRecord, at_ms: int) -> None:
        use = self._use.get(response.tenant or "")
        if use is None:
            return
        usage = response.usage or {}
        tokens = usage.get("total_tokens")
        if tokens is None:
            tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        use.add(at_ms / 1000, tokens)

    def read(self, value: bytes | None, at_ms: int) -> None:
        """An answer as it is on the topic."""
        if not value or not any(marker in value for marker in self._markers):
            return
        try:
            response = ResponseRecord.model_validate_json(value)
        except ValidationError:
            return
        self.answered(response, at_ms)

    def verdict(self, caller: Caller | None) -> Verdict | None:
        """None for a key without budgets (or no key)."""
        if caller is None or caller.name not in self.callers:
            return None
        now = self._clock()
        use = self._use[caller.name]
        use.trim(now)
        minute_tokens = sum(s[1] for s in use.seconds)
        minute_requests = sum(s[2] for s in use.seconds)
        day_tokens = sum(m[1] for m in use.minutes)
        # When the oldest use in each window leaves it: the soonest anything frees up.
        minute_reset = (use.seconds[0][0] + MINUTE_S - now) if use.seconds else 0.0
        day_reset = ((use.minutes[0][0] + 1) * MINUTE_S + DAY_S - now) if use.minutes else 0.0
        limits = []  # (name, limit, used, reset seconds)
        if caller.tokens_per_minute is not None:
            limits.append(("tokens per minute", caller.tokens_per_minute, minute_tokens,
                           minute_reset))  # fmt: skip
        if caller.tokens_per_day is not None:
            limits.append(("tokens per day", caller.tokens_per_day, day_tokens, day_reset))
        if caller.requests_per_minute is not None:
            limits.append(("requests per minute", caller.requests_per_minute, minute_requests,
                           minute_reset))  # fmt: skip
        exceeded = [(name, limit, used, reset) for name, limit, used, reset in limits
                    if used >= limit]  # fmt: skip
        headers = _headers(limits)
        if not exceeded:
            return Verdict(False, 0, headers)
        wait = max(1, math.ceil(max(reset for *_, reset in exceeded)))
        headers["Retry-After"] = str(wait)
        name, limit, used, _ = exceeded[0]
        message = (
            f"API key {caller.name!r} is over its budget of {limit} {name} ({used} used); "
            f"retry after {wait} s"
        )
        return Verdict(True, wait, headers, message)


def _headers(limits: list[tuple[str, int, int, float]]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers: tokens (per minute where set, else per day) and
    requests (per minute)."""
    headers: dict[str, str] = {}
    for name, limit, used, reset in limits:
        kind = "requests" if name.startswith("requests") else "tokens"
        if f"x-ratelimit-limit-{kind}" in headers:
            continue  # tokens per minute, listed first, speaks for tokens
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used))
        headers[f"x-ratelimit-reset-{kind}"] = _duration(reset)
    return headers


def _duration(seconds: float) -> str:
    """As OpenAI writes a reset: ``1s``, ``6m0s``, ``1h2m3s``."""
    whole = max(0, math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class BudgetFollower:
    """Reads every answer of the budgets' window, then follows the responses topic."""

    def __init__(self, settings: Settings, budgets: Budgets):
        self.settings = settings
        self.budgets = budgets
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer, tps = await assigned_consumer(
            self.settings, Topics.from_settings(self.settings).responses, self._stack
        )
        await seek_since(consumer, tps, self.settings, self.budgets.window_s)
        self._task = asyncio.create_task(self._follow(consumer), name="bridge-budgets")

    async def _follow(self, consumer) -> None:  # type: ignore[no-untyped-def]
        oldest = (time.time() - self.budgets.window_s) * 1000
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if record.timestamp >= oldest:
                        self.budgets.read(record.value, record.timestamp)

    async def stop(self) -> None:
        await stop_task(self._task)
        await self._stack.aclose()
