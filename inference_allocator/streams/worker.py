"""The worker agent: fetch requests, dispatch by priority onto leased GPU slots, answer.

Its loops share one event loop, and none polls for work:

* fetch (``intake.Intake``): ``getmany`` from the three request topics into the
  ``PriorityDispatcher``; a level whose buffer is full has its partitions paused
  (backpressure, never dropping);
* dispatch: wait for a free slot, *then* pop the best waiting record that the slot's pool
  serves, so a high that arrived while every slot was busy overtakes every low still
  waiting; slots of a pool whose server is down take nothing; a streamed request's text
  goes out as chunk records while it runs (``streaming.ChunkWriter``);
* commit: commit the contiguous answered prefix of each partition, off the hot path
  (``answers.Answers``: responses, dead letters, commits);
* results: follow every answer of the retention window (``consumers.results``), so a record
  of a request id that was answered gets that answer again instead of a second run;
* heartbeat: renew the expiry of every slot record (``announcer.SlotAnnouncer``);
* gauges: set the Prometheus state gauges once a second (``gauges``);
* health (fleets with servers): check each pool's server (``fleet.health``);
* watchdog: notice a stop of the process past the session timeout (``leadership``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Coroutine
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from ..clients import (
    broker_traits,
    close_within,
    fetch_pace,
    make_consumer,
    make_producer,
    started,
)
from ..config import Settings
from ..consumers.results import ResultFollower
from ..errors import ConfigurationError
from ..fleet.backends import Completion, InferenceBackend, UpstreamUnreachable
from ..fleet.health import PoolHealth
from ..fleet.pools import Fleet, Pool
from ..metrics import MetricsServer, WorkerMetrics
from ..pacing import FetchPace
from ..schemas import Priority, ResponseRecord, now_ms
from ..topics import Topics, ensure_topics
from .announcer import BATCH_BYTES as SLOT_BATCH_BYTES
from .announcer import SlotAnnouncer
from .answers import Answers
from .cancellation import Cancellations
from .dispatcher import Pending, PriorityDispatcher
from .exactly_once import TransactionalAnswers
from .gauges import keep_gauges
from .intake import Intake
from .leadership import Membership
from .policies import DispatchPolicy, make_policy
from .replies import Replies, queue_time
from .slots import SlotInfo, SlotState, SlotTable

log = logging.getLogger(__name__)

#: slots dispatched in a row before the loop lets the inferences just spawned start. One
#: at a time, slots freed together each waited a whole turn of a busy loop (N=64, T=5 ms,
#: backlog: 26 of 64 slots free on average, efficiency 0.52; 0.63 with four, means of 4
#: alternating runs); all at once, each inference started only once all were dispatched
#: (N=64, T=20 ms: 0.945 -> 0.923; 0.95 with four).
DISPATCH_BURST = 4
# SIGTERM (Ctrl-C) ends a worker within about _DRAIN_TIMEOUT_S + 3 * _CLOSE_STEP_S.
_DRAIN_TIMEOUT_S = 5.0
_CLOSE_STEP_S = 2.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Worker:
    """One worker agent of the consumer group; build with ``Settings``, then ``start()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: InferenceBackend | None = None,
        policy: DispatchPolicy | None = None,
        fleet: Fleet | None = None,
    ):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.worker_id = settings.worker_id or default_worker_id()
        self.fleet = fleet or Fleet.from_settings(settings, backend)
        self.dispatcher = PriorityDispatcher(
            policy or make_policy(settings.scheduling_policy, settings.shares()),
            max_wait_ms={Priority(k): v for k, v in settings.max_wait_ms().items()},
        )
        layout = [
            SlotInfo(pool.name, pool.endpoint, tuple(pool.spec.models))
            for pool in self.fleet.pools
            for _ in pool.gpu_ids
        ]
        self.slots = SlotTable(
            self.worker_id, self.fleet.total_slots, int(settings.lease_ttl_seconds * 1000), layout
        )
        self.health = PoolHealth(self.fleet, self._pool_changed)
        # Match slots to requests by pool when some slot cannot run some model, or some
        # pool can go down; otherwise every free slot takes the next request (fast path).
        self._routed = (
            self.fleet.routed
            or self.health.needed
            or any(pool.loads_models for pool in self.fleet.pools)
        )
        # leader mode: slots are announced, and requests dispatched, only while this worker
        # owns the request partitions; a standby's slots stay out of the slot table.
        self.membership = Membership(
            self.worker_id, settings.worker_mode == "leader", settings.session_timeout_ms / 1000
        )
        self.announcer = SlotAnnouncer(settings, self.topics, self.slots, self.membership)
        answers = TransactionalAnswers if settings.exactly_once else Answers
        self.answers = answers(settings, self.topics, self.worker_id)
        self.cancellations = Cancellations(settings, self.cancel)
        self.results = ResultFollower(settings, self.answers.retained)
        self.metrics = WorkerMetrics()
        self.answers.metrics = self.metrics
        self.replies = Replies(self.answers, self.topics, self.slots, self.worker_id, self.metrics)
        self._metrics_server = (
            MetricsServer(self.metrics.registry, settings.worker_metrics_port)
            if settings.worker_metrics_port
            else None
        )
        # By request id: the task of a run while its backend call runs (a cancellation
        # cancels it), and the record it runs
        self._running: dict[str, tuple[asyncio.Task[None], Pending]] = {}
        #: runs cancelled by a cancellation (any other cancellation of a run's task is the
        #: worker stopping)
        self._cancelled_runs: set[str] = set()
        self._producer: AIOKafkaProducer
        self._slot_producer: AIOKafkaProducer
        self._consumer: AIOKafkaConsumer
        self._stack = contextlib.AsyncExitStack()
        self.intake = Intake(
            settings,
            self.topics,
            self.fleet,
            self.dispatcher,
            self.answers,
            duplicate=lambda pending: self._duplicate(pending, fetched=True),
            spawn=self._spawn,
            stir=lambda: self.pace.stir(),
        )
        self.pace = FetchPace(idle_ms=1)  # replaced in ``start``
        self._records_waiting = self.intake.records_waiting
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await ensure_topics(self.settings)
        if self.settings.exactly_once and not (await broker_traits(self.settings)).kafka_like:
            raise ConfigurationError(
                f"INFERENCE_EXACTLY_ONCE needs Kafka transactions, and the broker at "
                f"{self.settings.bootstrap_servers} refuses even an idempotent producer "
                "(the embedded Tansu does): use Apache Kafka"
            )
        # Idle once nothing was fetched, waits or runs for a while (see pacing).
        self.pace = await fetch_pace(
            self.settings, busy=lambda: bool(self._running) or len(self.dispatcher) > 0
        )
        # aiokafka clients must be built inside the running event loop.
        self._producer = await make_producer(self.settings)
        # Slot-table writes get their own connection, and batch themselves (announcer.py):
        # a 20 ms linger under load gathers ~60 KB, one produce request in batches this
        # large, four in aiokafka's default 16 KB ones.
        self._slot_producer = await make_producer(self.settings, max_batch_size=SLOT_BATCH_BYTES)
        self.announcer.attach(self._slot_producer)
        self._consumer = await make_consumer(
            self.settings,
            pauses=True,  # backpressure pauses a level's partitions
            group_id=self.settings.consumer_group,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=256 * 1024,
            **(
                {"partition_assignment_strategy": (self.membership.assignor,)}
                if self.membership.assignor
                else {}
            ),
        )
        self.answers.attach(self._producer, self._consumer)  # a rebalance may come at once
        self.intake.attach(self._consumer)
        self.replies.attach(self._producer)
        await self._stack.enter_async_context(started(self._producer, self.settings))
        await self._stack.enter_async_context(started(self._slot_producer, self.settings))
        self._consumer.subscribe(list(self.topics.requests), listener=_Rebalance(self))
        await self._stack.enter_async_context(started(self._consumer, self.settings))
        self.pace.follow(self._consumer, pauses=True)
        # Every answer and every cancellation of the retention window is known before the
        # first record is taken.
        await self.cancellations.start(self._stack, self.pace)
        await self.results.start(self._stack, self.pace)
        following = asyncio.create_task(self.results.run(), name="worker-results")
        self._stack.push_async_callback(_stop_task, following)
        cancelling = asyncio.create_task(self.cancellations.run(), name="worker-cancellations")
        self._stack.push_async_callback(_stop_task, cancelling)
        read_back = [
            asyncio.ensure_future(self.results.caught_up()),
            asyncio.ensure_future(self.cancellations.caught_up()),
        ]
        try:
            await asyncio.gather(*read_back)
        except BaseException:
            for waiting in read_back:  # the other one too, not left to its own timeout
                waiting.cancel()
            await asyncio.gather(*read_back, return_exceptions=True)
            await _stop_task(following)
            await _stop_task(cancelling)
            raise
        self._stack.push_async_callback(self.fleet.close)
        await self.health.check_all()  # a server that is down at start starts down
        if self.membership.assignor is None:  # shared; a leader announces once it leads
            await self.announcer.publish_all()
        self.membership.started()
        self._loops = [
            asyncio.create_task(self.intake.run(), name="worker-fetch"),
            asyncio.create_task(self._dispatch_loop(), name="worker-dispatch"),
            asyncio.create_task(self.answers.commit_loop(), name="worker-commit"),
            asyncio.create_task(self.announcer.heartbeat(), name="worker-heartbeat"),
            asyncio.create_task(self.membership.watch(), name="worker-watchdog"),
            cancelling,
            asyncio.create_task(self.pace.run(), name="worker-pace"),
            following,
            asyncio.create_task(
                keep_gauges(self.metrics, self.slots, self.dispatcher, self._consumer, self.topics),
                name="worker-gauges",
            ),
        ]
        if self._metrics_server is not None:
            self._metrics_server.start()
            self._stack.callback(self._metrics_server.stop)
        if self.health.needed:
            self._loops.append(asyncio.create_task(self.health.run(), name="worker-health"))
        log.info(
            "worker %s: %d GPU slots (%s), policy %s, %s mode, group %s on %s",
            self.worker_id,
            self.fleet.total_slots,
            ", ".join(f"{p.name}: {len(p.gpu_ids)}" for p in self.fleet.pools),
            self.dispatcher.policy.name,
            self.settings.worker_mode,
            self.settings.consumer_group,
            self.settings.bootstrap_servers,
        )

    async def stop(self) -> None:
        """Stop taking work, let running inferences answer, commit, withdraw the slots."""
        self._stopping = True  # a run that ends takes no next request
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        # Running inferences may finish and answer, and the broker take the answers; not
        # while answers are not getting through (the broker is gone). What is cut short
        # stays uncommitted and is redelivered: at-least-once.
        drain = 0.1 if self.answers.retrying else _DRAIN_TIMEOUT_S
        drained_by = time.monotonic() + drain
        if self._in_flight:
            _, unfinished = await asyncio.wait(self._in_flight, timeout=drain)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            if unfinished:
                log.warning("stopping with %d requests unanswered; they will be redelivered",
                            len(unfinished))  # fmt: skip
        with contextlib.suppress(TimeoutError):  # the answers given, acknowledged
            await asyncio.wait_for(
                self.answers.all_given(), max(drained_by - time.monotonic(), 0.1)
            )
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(self.answers.commit(), _CLOSE_STEP_S)
            # The slots leave the compacted table with the worker.
            await asyncio.wait_for(self._withdrawn(), _CLOSE_STEP_S)
        await self.announcer.close()
        await self.answers.close()
        await close_within(self._stack, _CLOSE_STEP_S)
        log.info("worker %s stopped", self.worker_id)

    async def _withdrawn(self) -> None:
        await asyncio.gather(*await self.announcer.withdraw())

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def run_forever(self) -> None:
        async with self:
            done, _ = await asyncio.wait(self._loops, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a loop that died raises here

    def assignment(self) -> set[TopicPartition]:
        """The request partitions this worker owns right now."""
        return set(self._consumer.assignment())

    def _duplicate(self, pending: Pending, *, fetched: bool) -> bool:
        """Whether ``pending``'s request id has had, or is having, its run; then it is dealt
        with here: an answered one (retained) is answered again with that very answer, a
        redelivery of the record answered is only committed, and a record of an id that
        waits or runs here (``fetched``: a retry while the first is queued or running) is
        committed and left to the first one's answer."""
        request_id = pending.request_id
        answer = self.answers.retained.get(request_id)
        if answer is not None and answer.origin is None:
            answer = None  # a record refused (DLQ) never ran: a valid one of its id may
        running = self._running.get(request_id)
        if fetched and running is not None and running[1].origin == pending.origin:
            # The record that runs, fetched again after a rebalance: its run completes it
            # (completing it here would commit past a request still running); unless that
            # run's answer will not be given (exactly-once: fetched before the rebalance).
            return running[1].generation == pending.generation
        if answer is not None and answer.origin != pending.origin:
            log.info("request %s was answered (%s): giving that answer again",
                     request_id, answer.origin, extra=self.replies.about(pending))  # fmt: skip
            self._spawn(self.replies.give(pending, answer))
            return True
        if (
            answer is not None
            or self.answers.answered(request_id)
            or (fetched and (request_id in self._running or self.dispatcher.holds(request_id)))
        ):
            self.answers.completed(pending.tp, pending.offset)
            return True
        return False

    # --- dispatch -------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        if self._routed:
            await self._routed_dispatch_loop()
            return
        dispatched = 0
        while True:
            gpu_id = await self.slots.acquire()
            pending = self._pop_unless_stalled()
            while pending is None and not self.membership.stalled():
                self._records_waiting.clear()
                await self._records_waiting.wait()
                # The wait may span a stop of the process (SIGSTOP): look again before
                # taking a record, as after acquiring the slot.
                pending = self._pop_unless_stalled()
            if pending is None:  # stalled: nothing until the group says who owns what
                self._release(gpu_id)
                await self.membership.wait_until_confirmed()
                continue
            self._dispatch(gpu_id, pending)
            dispatched += 1
            if dispatched % DISPATCH_BURST == 0:
                await asyncio.sleep(0)  # the inferences just spawned start

    def _next_for(self, gpu_id: int) -> Pending | None:
        """The request a slot whose run just ended takes at once: its lease ends and the
        slot is kept, with no turn of the loop in between (handed back and dispatched
        again, it waited a turn of a busy loop: at N=64, T=5 ms a slot sat free 1.2-2.8 ms
        on average between requests). None, and the slot is released, for a routed fleet
        (a slot takes only what its pool serves: the dispatch loop matches them), with
        nothing waiting, or with the worker stopping or stalled."""
        if self._routed or self._stopping or not len(self.dispatcher):
            return None
        following = self._pop_unless_stalled()
        if following is not None:
            self.slots.end_lease(gpu_id)
        return following

    def _pop_unless_stalled(self) -> Pending | None:
        return None if self.membership.stalled() else self.dispatcher.pop()

    async def _routed_dispatch_loop(self) -> None:
        """Each free slot takes the most urgent waiting request its pool serves; woken by
        new records, released slots and pools coming back (never by a timer)."""
        dispatched = 0
        while True:
            if self.membership.stalled():
                await self.membership.wait_until_confirmed()
            self._records_waiting.clear()
            match = self._match()
            if match is None:
                await self._records_waiting.wait()
                continue
            gpu_id, pending = match
            self.slots.take(gpu_id)
            self._dispatch(gpu_id, pending)
            dispatched += 1
            if dispatched % DISPATCH_BURST == 0:
                await asyncio.sleep(0)

    def _match(self) -> tuple[int, Pending] | None:
        """The longest-free slot of an up pool that has a runnable request, with it (for a
        pool whose slots load models, a warm slot, or a warm request in the window)."""
        tried: set[str] = set()
        free = self.slots.free_ids()
        for gpu_id in free:
            pool = self.fleet.pool_of(gpu_id)
            if pool.name in tried or not pool.up:
                continue
            tried.add(pool.name)
            if pool.loads_models:
                mine = [(g, self.slots.model_of(g)) for g in free if g in pool.gpu_ids]
                match = self.dispatcher.pop_warm(pool.serves, mine, self.settings.affinity_window)
                if match is not None:
                    return match
                continue
            pending = self.dispatcher.pop(None if pool.any_model else pool.serves)
            if pending is not None:
                return gpu_id, pending
        return None

    def _release(self, gpu_id: int) -> SlotState:
        """Free a slot and wake the dispatch loop."""
        record = self.slots.release(gpu_id)
        self._records_waiting.set()
        return record

    def _dispatch(self, gpu_id: int, pending: Pending) -> SlotState | None:
        """Lease ``gpu_id`` to ``pending`` and start its run; or, for a request that does
        not run (answered meanwhile, cancelled, expired), free the slot and return its free
        state (not written: a slot from the dispatch loop was free already)."""
        if self.intake.paused:  # a record left the dispatcher: a level may resume
            self.intake.apply_backpressure()
        request = pending.request
        if self._duplicate(pending, fetched=False):  # answered while it waited
            return self._release(gpu_id)
        now = now_ms()
        if self.cancellations.pending(pending.request_id):  # cancelled before it was fetched
            self._spawn(self.replies.give(pending, self.replies.cancelled(pending, now)))
            return self._release(gpu_id)
        if request.deadline_ms is not None and now >= request.deadline_ms:
            self._spawn(self.replies.give(pending, self.replies.expired(pending, now)))
            return self._release(gpu_id)
        pool = self.fleet.pool_of(gpu_id)
        if pool.loads_models and self.slots.model_of(gpu_id) != request.model_id:
            self.metrics.model_loads.inc(pool.name)
        lease, record = self.slots.lease(
            gpu_id, pending.request_id, pending.priority, request.model_id
        )
        self.metrics.dispatches.inc(pending.priority)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dispatched", extra=self.replies.about(pending, gpu_id))
        self.metrics.wait.observe(
            queue_time(pending, lease.leased_at_ms) / 1000, pending.priority, request.model_id
        )
        self.announcer.publish(record)
        self._spawn(self._run(gpu_id, pending, lease.leased_at_ms))
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
        # The backend call runs in this task (not one of its own: a task per request less).
        self._running[pending.request_id] = (task, pending)
        try:
            completion = await pool.run(gpu_id, request, writer.write if writer else None)
        except asyncio.CancelledError:
            if pending.request_id not in self._cancelled_runs:
                raise  # the worker is stopping, not this request
            # Cancelled while running: the backend call is abandoned (an HTTP backend's
            # connection closed) and the slot freed at once; the task goes on to answer.
            task.uncancel()
            status, error = "cancelled", "cancelled while running; the slot was freed"
        except UpstreamUnreachable as exc:
            status, error = "error", str(exc)
            log.warning(
                "request %s: %s",
                pending.request_id,
                error,
                extra=self.replies.about(pending, gpu_id),
            )
            await self._pool_changed(pool, up=False, reason=error)
        except Exception as exc:  # a backend failure answers the request, never kills us
            status, error = "error", f"inference failed: {type(exc).__name__}: {exc}"
            log.warning(
                "request %s: %s",
                pending.request_id,
                error,
                extra=self.replies.about(pending, gpu_id),
            )
        finally:
            self._running.pop(pending.request_id, None)
            self._cancelled_runs.discard(pending.request_id)
        inference_ms = (time.perf_counter() - started_at) * 1000
        self.metrics.inference.observe(inference_ms / 1000, pending.priority, request.model_id)
        # The GPU is free as soon as inference returns; the answer's ack need not hold it.
        following = self._next_for(gpu_id)
        if following is not None:
            freed = self._dispatch(gpu_id, following)
            if freed is not None:  # it did not run: the slot, last written leased, is free
                self.announcer.publish(freed)
        else:
            self.announcer.publish(self._release(gpu_id))
            # Let the dispatch loop (woken by the release) give the slot its next request
            # before this answer is built and sent: the GPU's idle time is the scarcer one.
            await asyncio.sleep(0)
        response = ResponseRecord(
            request_id=pending.request_id,
            model_id=request.model_id,
            status=status,
            output=completion.text if status == "ok" else None,
            gpu_id=gpu_id,
            worker_id=self.worker_id,
            priority=pending.priority,
            pool=pool.name,
            finish_reason=completion.finish_reason,
            usage=completion.usage,
            tenant=request.tenant,
            inference_time_ms=round(inference_ms, 3),
            queue_time_ms=queue_time(pending, leased_at_ms),
            started_at_ms=leased_at_ms,
            completed_at_ms=now_ms(),
            error=error,
            origin=pending.origin,
        )
        await self.replies.give(pending, response, writer)

    async def _pool_changed(self, pool: Pool, up: bool, reason: str = "") -> None:
        """A pool went down (its slots take nothing, and say so in the slot table) or came
        back (its free slots take requests again)."""
        if not up and pool.mark_down(reason):
            log.warning("pool %s is down: %s", pool.name, reason)
        for record in self.slots.set_down(pool.gpu_ids, down=not pool.up):
            self.announcer.publish(record)
        if pool.up:
            self._records_waiting.set()

    async def cancel(self, request_id: str) -> bool:
        """A cancellation: a running request's backend call is cancelled (its ``_run``
        answers ``cancelled`` and frees the slot); a waiting one leaves the dispatcher and
        is answered ``cancelled``, never run. False when this worker holds neither."""
        running = self._running.get(request_id)
        if running is not None:
            self._cancelled_runs.add(request_id)
            running[0].cancel()
            return True
        pending = self.dispatcher.remove(request_id)
        if pending is None:
            return False
        self._spawn(self.replies.give(pending, self.replies.cancelled(pending, now_ms())))
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.answers.unsettle()
        dropped = self.dispatcher.drop_partitions(revoked)
        with contextlib.suppress(KafkaError):
            await self.answers.commit(only=revoked)
        self.answers.forget(revoked)
        if dropped:
            log.info("rebalance: %d waiting records left for the new owner", dropped)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.intake.assigned()
        change = self.membership.assigned(bool(self._consumer.assignment()))
        if change is True:
            log.info("worker %s leads: dispatching for %d slots", self.worker_id,
                     self.slots.gpu_count)  # fmt: skip
            # Announced before the callback returns, as a shared worker's are before start()
            # returns: a reader that looks next finds them.
            await self.announcer.publish_all()
            self._records_waiting.set()
        elif change is False:
            log.info("worker %s stands by", self.worker_id)
            await self.answers.stand_by()
            await self.announcer.withdraw()
        if self.membership.leading:
            await self.answers.settle()


async def _stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker):
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker._on_assigned(assigned)
