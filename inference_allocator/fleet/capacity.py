"""How many requests a pool with ``slots = "auto"`` keeps in flight: as many as its server
runs without queueing them itself, so that the order of what waits stays ours.

Found from what the server says, where it says it:

* **its slots** (llama.cpp's ``/props``: ``total_slots``, its ``--parallel``): the limit;
* **its queue** (vLLM's and SGLang's ``/metrics``: requests running and waiting; the
  batching mock's ``server_report()``): while nothing waits in the server and every slot
  we allow is used, more: twice as many until the server first queues (a slow start, as
  TCP's), then one more (additive increase); once requests wait there while every slot we
  allow is used, at two asks in a row (a server admits new requests between its steps, so
  one may wait for a moment with room to spare), back to what it runs, then no increase
  for ``HOLD_S`` (the queue is the sign that the server is full);
* **nothing**: the time per output token of our own requests (Netflix's concurrency-limits
  AIMD, on a signal that suits continuous batching): while it stays within ``TOLERANCE``
  times the best seen lately and every slot is used, more (the same slow start, then one
  at a time); past it, ``BACKOFF`` times fewer, then no increase for ``HOLD_S``.

Pure logic, no I/O: the worker asks the server and gives this the answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

#: after a decrease, how long no increase is tried (the server just said it is full); it
#: doubles, up to ``MAX_HOLD_S``, each time a probe above the limit finds the server full
#: again (a probe queues a request in the server for a moment), and is back to ``HOLD_S``
#: once one finds room
HOLD_S = 5.0
MAX_HOLD_S = 80.0
#: latency limit: how much slower a token may get than the best seen before the limit drops
TOLERANCE = 2.0
BACKOFF = 0.8
#: how fast the best time per token seen is forgotten (per observation), so a slower model
#: or longer prompts later do not read as overload for good
DRIFT = 0.01


@dataclass(frozen=True, slots=True)
class ServerReport:
    """What a server says of its capacity: its slots, or what it runs and queues now."""

    total_slots: int | None = None
    running: int | None = None
    waiting: int | None = None


class Capacity:
    def __init__(self, max_slots: int, clock: Callable[[], float] = time.monotonic):
        self.max_slots = max_slots
        self.limit = 1
        self.source = "probing"
        self._clock = clock
        self._hold_until = 0.0
        self._slow_start = True  # doubling until the server first shows it is full
        self._hold_s = HOLD_S
        self._probing = False  # the last increase was a probe past a known full point
        self._queued = False  # requests waited in the server at the last ask
        self._best_s_per_token: float | None = None

    def told(self, report: ServerReport, in_flight: int) -> bool:
        """The server's report, with how many requests we have in flight there; True when
        the limit changed."""
        if report.total_slots:
            return self._set(report.total_slots, "the server's slots")
        if report.running is None or report.waiting is None:
            return False
        full = in_flight >= self.limit
        queued, self._queued = self._queued, report.waiting > 0 and full
        if report.waiting > 0:
            if not queued or not full:
                return False  # perhaps only between two of its steps: ask again
            self._full()
            return self._set(min(self.limit, max(1, report.running)), "the server's queue")
        if full:
            self._room()
            if self._clock() >= self._hold_until:
                return self._set(self._more(), "the server's queue")
        return False

    def ran(self, seconds: float, tokens: int | None, in_flight: int) -> bool:
        """A request ended after ``seconds`` with ``tokens`` output tokens, while
        ``in_flight`` ran (counting it); for a server that says nothing. True when the
        limit changed."""
        per_token = seconds / max(tokens or 1, 1)
        best = self._best_s_per_token
        best = per_token if best is None else min(per_token, best * (1 + DRIFT))
        self._best_s_per_token = best
        if per_token > TOLERANCE * best:
            self._full()
            return self._set(int(self.limit * BACKOFF), "latency")
        if in_flight >= self.limit:
            self._room()
            if self._clock() >= self._hold_until:
                return self._set(self._more(), "latency")
        return False

    def _more(self) -> int:
        if self._slow_start:
            return self.limit * 2
        self._probing = True
        return self.limit + 1

    def _full(self) -> None:
        """The server showed it is full: no more doubling, and no increase for a while
        (the longer, the more often a probe found it full)."""
        if self._probing:
            self._hold_s = min(self._hold_s * 2, MAX_HOLD_S)
        self._slow_start = self._probing = False
        self._hold_until = self._clock() + self._hold_s

    def _room(self) -> None:
        """Every slot allowed is used and the server keeps up: a probe found room."""
        if self._probing:
            self._probing = False
            self._hold_s = HOLD_S

    def _set(self, limit: int, source: str) -> bool:
        limit = max(1, min(limit, self.max_slots))
        changed = limit != self.limit
        self.limit, self.source = limit, source
        return changed
