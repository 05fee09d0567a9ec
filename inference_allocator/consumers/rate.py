"""How fast the fleet answers: responses per second over a recent window, counted by every
bridge from the responses topic it reads anyway (all partitions, so the whole fleet's)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class CompletionRate:
    """Answers counted per whole second; the rate is over the last ``window_s`` seconds."""

    def __init__(self, window_s: int = 10, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._buckets: deque[tuple[int, int]] = deque()  # (second, answers in it)

    def add(self, count: int) -> None:
        second = int(self._clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1] = (second, self._buckets[-1][1] + count)
        else:
            self._buckets.append((second, count))
        self._trim(second)

    def per_second(self) -> float:
        """Answers per second over the window (or since start, if that is shorter)."""
        now = self._clock()
        self._trim(int(now))
        span = min(self.window_s, max(now - self._started, 1.0))
        return sum(count for _, count in self._buckets) / span

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()


def retry_after(waiting: int, limit: int, rate: float, fallback: int, cap: int = 300) -> int:
    """Seconds until a refused request would be admitted: the requests that must be answered
    before the queue is below ``limit`` again, at the recent ``rate``; ``fallback`` when
    nothing was answered lately (the rate says nothing)."""
    if rate <= 0:
        return fallback
    return max(1, min(cap, math.ceil((waiting - limit + 1) / rate)))
