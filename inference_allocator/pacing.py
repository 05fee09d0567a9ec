"""How long a process's consumers wait in a fetch: their short wait while work flows,
longer and longer ones once nothing has for a while, so an idle stack does not poll its
broker hot."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

#: nothing read and nothing awaited this long: the process starts to go idle (a longer
#: wait, with slower doublings, made the way down cost an idle process more CPU)
IDLE_AFTER_S = 1.0
#: how often an idle process doubles its consumers' fetch waits, up to their caps
SETTLE_TICK_S = 0.25
#: the cap of a reader off the path of a request (slot table, backlog, cancellations):
#: what it reads can wait this long while nothing else happens
OFF_PATH_IDLE_MS = 1000
#: the cap of a reader of status only (a worker's copy of the answers other workers gave):
#: after a quiet period its news may lag this long
STATUS_IDLE_MS = 2000
#: how often aiokafka's fetch loop wakes when nothing wakes it: the consumer's own
#: (``consumer_timeout_ms``, 0.2 s by default) while records flow, ``BUSY_WAKEUP_S`` for a
#: consumer that pauses partitions while busy (see ``set_fetch_wakeup``), and
#: ``IDLE_WAKEUP_S`` for every followed consumer once idle: then a fetch is in flight,
#: and its end wakes the loop anyway (the default woke each idle reader's loop several
#: times a second for nothing)
IDLE_WAKEUP_S = 1.0
BUSY_WAKEUP_S = 0.01


def set_fetch_wait(consumer: AIOKafkaConsumer, wait_ms: int) -> None:
    """Change ``fetch_max_wait_ms`` of a started consumer. aiokafka has no public setter;
    its fetcher reads this attribute for every FetchRequest it builds, so the fetch after
    the one in flight waits ``wait_ms``."""
    consumer._fetcher._fetch_max_wait_ms = wait_ms


def set_fetch_wakeup(consumer: AIOKafkaConsumer, seconds: float) -> None:
    """Change how long a started consumer's fetch loop may sleep when no event wakes it
    (the consumer's ``consumer_timeout_ms``, fixed when it is built: changed at run time
    here, where its fetcher keeps it).

    With partitions paused and resumed under load (the worker's intake), that loop now and
    then misses its wake-up and sends no fetch until this runs out: every slot of a worker
    then sat idle at once with records waiting in the broker (no fetch in flight, none
    buffered, nothing paused; seen under a backlog on Tansu). A busy worker's
    loop wakes every ``BUSY_WAKEUP_S``; an idle one every ``IDLE_WAKEUP_S``."""
    fetcher = consumer._fetcher
    if not hasattr(fetcher, "_fetcher_timeout"):
        raise RuntimeError("aiokafka's fetcher has no _fetcher_timeout: check the version")
    fetcher._fetcher_timeout = seconds


@dataclass
class _Followed:
    consumer: AIOKafkaConsumer
    busy_ms: int
    cap_ms: int
    wait_ms: int
    busy_wakeup_s: float
    pauses: bool = False


class FetchPace:
    """One process's pace: every consumer it follows fetches with its own busy wait while
    records flow or something is awaited (``stir``, ``busy``); once neither has happened
    for ``IDLE_AFTER_S`` its wait doubles every ``SETTLE_TICK_S`` up to its cap:
    ``idle_ms`` for a reader on a request's path, ``STATUS_IDLE_MS`` for a reader of status
    only, ``OFF_PATH_IDLE_MS`` for the others.

    On the embedded Tansu a fetch always waits its whole wait, so a consumer polling every
    2 ms costs the broker and the client CPU with nothing to read, and the first request
    after a quiet period pays up to the wait of the fetches in flight on its path (the
    worker's intake, then the bridge's answers; the two overlap). On Apache Kafka a long
    poll returns as soon as data arrives, so there a long idle wait costs no latency.
    """

    def __init__(self, idle_ms: int, busy: Callable[[], bool] = lambda: False):
        self.idle_ms = idle_ms
        self._busy = busy
        self._followed: list[_Followed] = []
        self._last_stir = time.monotonic()
        #: whether the waits are past the busy ones
        self.idle = False
        #: times this process went from idle to busy (a first request after quiet)
        self.wakes = 0

    def follow(
        self,
        consumer: AIOKafkaConsumer,
        *,
        on_path: bool = True,
        status: bool = False,
        cap_ms: int | None = None,
        pauses: bool = False,
    ) -> None:
        """Pace ``consumer`` (started) from now on; the wait it was built with is its wait
        under load. ``on_path``: it reads what a request waits for (requests, answers,
        chunks); else what a running request may need (cancellations). ``status``: it
        reads status only (``STATUS_IDLE_MS``). ``cap_ms``: a lower cap than that, for a
        reader whose news must not lag more (the slot table's heartbeats, against a short
        lease TTL). ``pauses``: its caller pauses and resumes partitions (its fetch loop
        wakes often while busy)."""
        busy_ms = consumer._fetcher._fetch_max_wait_ms
        if status:
            usual_ms = STATUS_IDLE_MS
        else:
            usual_ms = self.idle_ms if on_path else OFF_PATH_IDLE_MS
        cap_ms = max(busy_ms, usual_ms if cap_ms is None else min(cap_ms, usual_ms))
        busy_wakeup_s = BUSY_WAKEUP_S if pauses else consumer._fetcher._fetcher_timeout
        followed = _Followed(consumer, busy_ms, cap_ms, busy_ms, busy_wakeup_s, pauses)
        self._followed.append(followed)
        set_fetch_wakeup(consumer, IDLE_WAKEUP_S if self.idle else followed.busy_wakeup_s)

    def stir(self, now: float | None = None) -> None:
        """Work flows (records read, a request sent): every followed consumer goes short."""
        self._last_stir = time.monotonic() if now is None else now
        if self.idle:
            self.idle = False
            self.wakes += 1
            for followed in self._followed:
                followed.wait_ms = followed.busy_ms
                set_fetch_wait(followed.consumer, followed.busy_ms)
                set_fetch_wakeup(followed.consumer, followed.busy_wakeup_s)

    def settle(self, now: float | None = None) -> None:
        """Lengthen the waits if nothing happened for ``IDLE_AFTER_S`` and nothing is
        awaited (``now``: ``time.monotonic()`` unless given)."""
        now = time.monotonic() if now is None else now
        if self._busy():
            self._last_stir = now
            return
        if now - self._last_stir < IDLE_AFTER_S:
            return
        self.idle = True
        for followed in self._followed:
            set_fetch_wakeup(followed.consumer, IDLE_WAKEUP_S)
            longer = min(max(2 * followed.wait_ms, 1), followed.cap_ms)
            if longer != followed.wait_ms:
                followed.wait_ms = longer
                set_fetch_wait(followed.consumer, longer)

    def wait_ms(self) -> int:
        """The longest wait of a fetch any followed consumer may have in flight now."""
        return max((f.wait_ms for f in self._followed), default=0)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SETTLE_TICK_S)
            with contextlib.suppress(AttributeError):  # a consumer stopped meanwhile
                self.settle()
