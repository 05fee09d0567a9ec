"""The runs of one worker: a request leased a slot, run on its pool's backend, answered.

``start`` leases the slot the scheduler chose and spawns the run, unless the request need
not run (answered meanwhile, cancelled, past its deadline: answered here, the slot freed).
A run calls its pool's backend in its own task (a cancellation cancels it: an HTTP
backend's connection is closed), frees the slot the moment the backend returns (its next
request may start before this answer is sent), then gives the answer. ``duplicate`` keeps
one run per request id: a record of an id that was answered, waits or runs is dealt with
without a second run.

A run the scheduler preempts (``preempt``) is cut short the same way, gives no answer, and
waits again at the head of its level with one more preemption counted; its slot goes at
once to the request it was preempted for. Its record is not committed meanwhile, so a
worker that dies then loses nothing: the record is fetched again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..fleet.backends import Completion, UpstreamUnreachable
from ..fleet.pools import Fleet, Pool
from ..metrics import WorkerMetrics
from ..schemas import now_ms
from . import responses
from .announcer import SlotAnnouncer
from .answers import Answers
from .chunk_writer import ChunkWriter
from .leadership import Membership
from .replies import Replies
from .scheduler import Running, Scheduler
from .slots import SlotState, SlotTable
from .waiting import Pending

log = logging.getLogger("inference_allocator.streams.worker")

PoolDown = Callable[[Pool, bool, str], Awaitable[None]]


@dataclass(slots=True)
class Run:
    """A request running on a slot: the task that calls the backend (cancelled to cancel or
    preempt it), what it runs, where, since when, and its stream's writer."""

    task: asyncio.Task[None]
    pending: Pending
    gpu_id: int
    leased_at_ms: int
    writer: ChunkWriter | None


class Runs:
    def __init__(
        self,
        fleet: Fleet,
        slots: SlotTable,
        scheduler: Scheduler,
        answers: Answers,
        replies: Replies,
        announcer: SlotAnnouncer,
        metrics: WorkerMetrics,
        membership: Membership,
        *,
        max_preemptions: int = 0,
        wake: asyncio.Event,
        started: Callable[[], None] = lambda: None,
        ran: Callable[[Pool, float, int | None], None] = lambda pool, seconds, tokens: None,
        cancelled_before: Callable[[str], bool],
        relieve: Callable[[], None],
        pool_changed: PoolDown,
    ):
        self.fleet = fleet
        self.slots = slots
        self.scheduler = scheduler
        self.answers = answers
        self.replies = replies
        self.announcer = announcer
        self.metrics = metrics
        self.membership = membership
        self.max_preemptions = max_preemptions
        self._wake = wake  # the dispatch loop looks again
        self._started = started  # a run started: the preemption loop looks again
        self._ran = ran  # a run ended (ok): its pool's limit may learn from its time
        self._cancelled_before = cancelled_before  # a cancellation record was read
        self._relieve = relieve  # a request left the waiting ones: a level may resume
        self._pool_changed = pool_changed
        #: by request id, while its backend call runs
        self.running: dict[str, Run] = {}
        #: runs cancelled by a cancellation, and runs preempted with the request each was
        #: preempted for (any other cancellation of a run's task is the worker stopping)
        self._cancelled_runs: set[str] = set()
        self._preempted: dict[str, Pending] = {}
        #: every task spawned here (runs, answers given): a stop lets them finish
        self.in_flight: set[asyncio.Task[None]] = set()
        #: set when the worker stops: a run that ends takes no next request
        self.stopping = False

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    def release(self, gpu_id: int) -> SlotState:
        """Free a slot and wake the dispatch loop."""
        record = self.slots.release(gpu_id)
        self._wake.set()
        return record

    def duplicate(self, pending: Pending, *, fetched: bool) -> bool:
        """Whether ``pending``'s request id has had, or is having, its run; then it is dealt
        with here: an answered one (retained) is answered again with that very answer, a
        redelivery of the record answered is only committed, and a record of an id that
        waits or runs here (``fetched``: a retry while the first is queued or running) is
        committed and left to the first one's answer."""
        request_id = pending.request_id
        answer = self.answers.retained.get(request_id)
        if answer is not None and answer.origin is None:
            answer = None  # a record refused (DLQ) never ran: a valid one of its id may
        running = self.running.get(request_id)
        if fetched and running is not None and running.pending.origin == pending.origin:
            # The record that runs, fetched again after a rebalance: its run completes it
            # (completing it here would commit past a request still running); unless that
            # run's answer will not be given (exactly-once: fetched before the rebalance).
            return running.pending.generation == pending.generation
        if answer is not None and answer.origin != pending.origin:
            log.info("request %s was answered (%s): giving that answer again",
                     request_id, answer.origin, extra=self.replies.about(pending))  # fmt: skip
            self.spawn(self.replies.give(pending, answer))
            return True
        if (
            answer is not None
            or self.answers.answered(request_id)
            or (
                fetched and (request_id in self.running or self.scheduler.waiting.holds(request_id))
            )
        ):
            self.answers.completed(pending.tp, pending.offset)
            return True
        return False

    def start(self, gpu_id: int, pending: Pending) -> SlotState | None:
        """Lease ``gpu_id`` to ``pending`` and start its run; or, for a request that does
        not run (answered meanwhile, cancelled, expired), free the slot and return its free
        state (not written: a slot from the dispatch loop was free already)."""
        self._relieve()
        request = pending.request
        if self.duplicate(pending, fetched=False):  # answered while it waited
            return self.release(gpu_id)
        now = now_ms()
        if self._cancelled_before(pending.request_id):  # cancelled before it was fetched
            self.spawn(self.replies.give(pending, self.replies.cancelled(pending, now)))
            return self.release(gpu_id)
        if request.deadline_ms is not None and now >= request.deadline_ms:
            self.spawn(self.replies.give(pending, self.replies.expired(pending, now)))
            return self.release(gpu_id)
        pool = self.fleet.pool_of(gpu_id)
        if pool.loads_models and self.slots.model_of(gpu_id) != request.model_id:
            self.metrics.model_loads.inc(pool.name)
        lease, record = self.slots.lease(
            gpu_id, pending.request_id, pending.priority, request.model_id, request.tenant
        )
        self.metrics.dispatches.inc(pending.priority)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dispatched", extra=self.replies.about(pending, gpu_id))
        self.metrics.wait.observe(
            responses.queue_time(pending, lease.leased_at_ms) / 1000,
            pending.priority,
            request.model_id,
        )
        self.announcer.publish(record)
        if self.scheduler.fair is not None:
            self.scheduler.fair.started(pending.request_id, pending.priority, request)
        self.spawn(self._run(gpu_id, pending, lease.leased_at_ms))
        self._started()
        return None

    async def _run(self, gpu_id: int, pending: Pending, leased_at_ms: int) -> None:
        request = pending.request
        pool = self.fleet.pool_of(gpu_id)
        started_at = time.perf_counter()
        status, completion, error = "ok", Completion(""), None
        writer = self.replies.writer(pending) if request.stream else None
        if writer is not None:
            await writer.start()  # the stream's first record: it runs
        task = asyncio.current_task()
        assert task is not None
        request_id = pending.request_id
        # The backend call runs in this task (not one of its own: a task per request less).
        self.running[request_id] = Run(task, pending, gpu_id, leased_at_ms, writer)
        try:
            completion = await pool.run(gpu_id, request, writer.write if writer else None)
        except asyncio.CancelledError:
            if request_id not in self._cancelled_runs and request_id not in self._preempted:
                raise  # the worker is stopping, not this request
            # Cancelled or preempted while running: the backend call is abandoned (an HTTP
            # backend's connection closed) and the slot freed at once.
            task.uncancel()
            status, error = "cancelled", "cancelled while running; the slot was freed"
        except UpstreamUnreachable as exc:
            status, error = "error", str(exc)
            log.warning("request %s: %s", request_id, error,
                        extra=self.replies.about(pending, gpu_id))  # fmt: skip
            await self._pool_changed(pool, False, error)
        except Exception as exc:  # a backend failure answers the request, never kills us
            status, error = "error", f"inference failed: {type(exc).__name__}: {exc}"
            log.warning("request %s: %s", request_id, error,
                        extra=self.replies.about(pending, gpu_id))  # fmt: skip
        finally:
            self.running.pop(request_id, None)
        cancelled = request_id in self._cancelled_runs
        self._cancelled_runs.discard(request_id)
        # Preempted (even if the run ended just as it was): the slot goes to the request
        # it was preempted for, with no turn of the loop in between.
        urgent = self._preempted.pop(request_id, None)
        preempted = urgent is not None and status == "cancelled" and not cancelled
        if urgent is not None and not preempted and task.cancelling():
            task.uncancel()  # it ended before the preemption reached it
        inference_ms = (time.perf_counter() - started_at) * 1000
        if not preempted:
            self.metrics.inference.observe(inference_ms / 1000, pending.priority, request.model_id)
            if status == "ok" and pool.spec.auto:
                tokens = (completion.usage or {}).get("completion_tokens")
                self._ran(pool, inference_ms / 1000, tokens)
        else:
            pending.preemptions += 1
            pending.requeued_at_ms = now_ms()
            self.scheduler.waiting.requeue(pending)
            self._wake.set()
        if self.scheduler.fair is not None:  # counted before the slot's next is chosen
            if preempted:
                self.scheduler.fair.dropped(request_id)
            else:
                self.scheduler.fair.ran(request_id, completion.usage, status == "ok")
        # The GPU is free as soon as inference returns; the answer's ack need not hold it.
        if urgent is not None:
            self._hand_over(gpu_id, urgent)
        elif not self._next(gpu_id):
            # Let the dispatch loop (woken by the release) give the slot its next request
            # before this answer is built and sent: the GPU's idle time is the scarcer one.
            await asyncio.sleep(0)
        if preempted:
            return  # it runs again: its answer comes then
        response = responses.ran(
            pending,
            status=status,
            completion=completion,
            error=error,
            gpu_id=gpu_id,
            pool=pool.name,
            worker_id=self.replies.worker_id,
            leased_at_ms=leased_at_ms,
            inference_ms=inference_ms,
            completed_at_ms=now_ms(),
        )
        await self.replies.give(pending, response, writer)

    def preemptible(self) -> list[Running]:
        """The runs that may be cut short: preempted fewer than ``max_preemptions`` times,
        not being cancelled or preempted already, and, in a pool that does not allow it,
        not streaming text that its client has been sent."""
        found = []
        for request_id, run in self.running.items():
            if run.pending.preemptions >= self.max_preemptions:
                continue
            if request_id in self._cancelled_runs or request_id in self._preempted:
                continue
            if run.writer is not None and run.writer.written:
                if not self.fleet.pool_of(run.gpu_id).spec.preempt_streams:
                    continue
            background = bool(run.pending.request.background)
            found.append(Running(run.gpu_id, run.pending.priority, run.leased_at_ms, background))
        return found

    def preempt(self, gpu_id: int, urgent: Pending) -> None:
        """Cut short the run on ``gpu_id`` for ``urgent`` (the scheduler's choice): its
        backend call is cancelled, and its task gives ``urgent`` the slot."""
        run = next(run for run in self.running.values() if run.gpu_id == gpu_id)
        victim = run.pending
        self._preempted[victim.request_id] = urgent
        run.task.cancel()
        pool = self.fleet.pool_of(gpu_id)
        self.metrics.preemptions.inc(pool.name, victim.priority)
        log.info(
            "request %s (%s) preempted on %s for %s (%s), after %d ms; preempted %d time(s)",
            victim.request_id, victim.priority.value, self.slots.slot_id(gpu_id),
            urgent.request_id, urgent.priority.value, now_ms() - run.leased_at_ms,
            victim.preemptions + 1, extra=self.replies.about(victim, gpu_id),
        )  # fmt: skip

    def _next(self, gpu_id: int) -> bool:
        """A run on ``gpu_id`` ended: its next request starts on it at once where the
        scheduler has one for it (True; no turn of the loop between: a slot handed back
        waits a turn of a busy loop), else the slot is freed for the dispatch loop. Nothing
        follows while the worker stops or does not know whether it still leads."""
        following = None
        if not self.stopping and not self.membership.stalled():
            following = self.scheduler.next_for(gpu_id)
        if following is None:
            self.announcer.publish(self.release(gpu_id))
            return False
        self._hand_over(gpu_id, following)
        return True

    def _hand_over(self, gpu_id: int, pending: Pending) -> None:
        """The slot whose run just ended goes straight to ``pending``: its lease ends and
        the next begins, with no free state written in between."""
        self.slots.end_lease(gpu_id)
        freed = self.start(gpu_id, pending)
        if freed is not None:  # it did not run: the slot, last written leased, is free
            self.announcer.publish(freed)

    async def cancel(self, request_id: str) -> bool:
        """A cancellation: a running request's backend call is cancelled (its run answers
        ``cancelled`` and frees the slot); a waiting one leaves the waiting requests and is
        answered ``cancelled``, never run. False when this worker holds neither."""
        running = self.running.get(request_id)
        if running is not None:
            self._cancelled_runs.add(request_id)
            if request_id not in self._preempted:  # else cancelled already: answered so
                running.task.cancel()
            return True
        pending = self.scheduler.waiting.remove(request_id)
        if pending is None:
            return False
        self.spawn(self.replies.give(pending, self.replies.cancelled(pending, now_ms())))
        return True
