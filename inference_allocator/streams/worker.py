"""The worker agent: fetch requests, dispatch by priority onto leased GPU slots, answer.

Its loops share one event loop, and none polls for work:

* fetch (``intake.Intake``): ``getmany`` from the three request topics into the waiting
  requests (``waiting``); a level whose buffer is full has its partitions paused, or a level
  of several partitions each partition that holds its share (backpressure, never dropping);
* dispatch (``dispatch_loop``): wait for a free slot, *then* ask the ``Scheduler`` which
  waiting request it takes, so a high that arrived while every slot was busy overtakes
  every low still waiting; slots of a pool whose server is down take nothing. Each run
  (``runs.Runs``) calls its pool's backend and answers; a streamed request's text goes out
  as chunk records while it runs (``chunk_writer``);
* commit: commit the contiguous answered prefix of each partition, off the hot path
  (``answers.Answers``: responses, dead letters, commits);
* results: follow every answer of the retention window (``consumers.results``), so a record
  of a request id that was answered gets that answer again instead of a second run, and
  other workers' answers count in fair shares (``fair_share``);
* heartbeat: renew the expiry of every slot record (``announcer.SlotAnnouncer``);
* gauges: set the Prometheus state gauges once a second (``gauges``);
* health (fleets with servers): check each pool's server (``fleet.health``);
* preemption: cut short a run of a lower level for a request that has waited too long
  (``preemption``; the choice is the ``Scheduler``'s);
* limits (pools with ``slots = "auto"``): keep in flight what each server runs without
  queueing (``pool_limits``);
* watchdog: notice a stop of the process past the session timeout (``leadership``).

``Worker`` only builds these, starts and stops them, and relays a rebalance to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from ..apikeys import KeyRing
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
from ..fleet.backends import InferenceBackend
from ..fleet.health import PoolHealth
from ..fleet.pools import Fleet, Pool
from ..metrics import MetricsServer, WorkerMetrics
from ..pacing import FetchPace
from ..schemas import Priority, ResponseRecord
from ..topics import Topics, ensure_topics, record_batch_limits
from .announcer import BATCH_BYTES as SLOT_BATCH_BYTES
from .announcer import SlotAnnouncer
from .answers import Answers
from .cache_affinity import CacheAffinity, Placement
from .cancellation import Cancellations
from .dispatch_loop import DispatchLoop
from .exactly_once import TransactionalAnswers
from .fair_share import FairShare
from .gauges import keep_gauges
from .intake import Intake
from .leadership import Membership
from .policies import DispatchPolicy, make_policy
from .pool_limits import PoolLimits
from .preemption import PreemptionLoop
from .replies import Replies
from .runs import Runs
from .scheduler import Scheduler
from .slots import SlotInfo, SlotTable

log = logging.getLogger(__name__)

# SIGTERM (Ctrl-C) ends a worker within about _DRAIN_TIMEOUT_S + 3 * _CLOSE_STEP_S.
_DRAIN_TIMEOUT_S = 5.0
_CLOSE_STEP_S = 2.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def _weights(settings: Settings) -> dict[str, float]:
    """The tenants' weights, from the API keys; a keys file this host cannot read (kept on
    the bridges' hosts only) leaves every tenant at weight 1, said once; a malformed one
    stops the worker, as it stops a bridge."""
    secret = settings.api_keys.get_secret_value() if settings.api_keys else None
    keys_file = settings.api_keys_file
    if keys_file is not None and not os.access(keys_file, os.R_OK):
        log.warning(
            "fair shares: INFERENCE_API_KEYS_FILE=%s cannot be read here; the tenants it "
            "names weigh 1",
            keys_file,
        )
        keys_file = None
    return KeyRing.load(secret, keys_file).weights()


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
        layout = [
            SlotInfo(pool.name, pool.endpoint, tuple(pool.spec.models))
            for pool in self.fleet.pools
            for _ in pool.gpu_ids
        ]
        self.slots = SlotTable(
            self.worker_id, self.fleet.total_slots, int(settings.lease_ttl_seconds * 1000), layout
        )
        self.metrics = WorkerMetrics()
        self.scheduler = Scheduler(
            self.fleet,
            self.slots,
            policy=policy or make_policy(settings.scheduling_policy, settings.shares()),
            max_wait_ms={Priority(k): v for k, v in settings.max_wait_ms().items()},
            affinity_window=settings.affinity_window,
            preempt_after_ms=settings.preempt_after_ms,
            affinity=CacheAffinity.for_fleet(
                self.fleet, settings.prefix_max_imbalance, self._count_placement
            ),
            fair=FairShare(_weights(settings), output_weight=settings.fair_output_weight)
            if settings.fair_share
            else None,
        )
        #: how this worker's own answers look on the topic (fair shares count the others')
        self._own_answer = f'"worker_id":"{self.worker_id}"'.encode()
        self.health = PoolHealth(self.fleet, self._pool_changed)
        # leader mode: slots are announced, and requests dispatched, only while this worker
        # owns the request partitions; a standby's slots stay out of the slot table.
        self.membership = Membership(
            self.worker_id, settings.worker_mode == "leader", settings.session_timeout_ms / 1000
        )
        self.announcer = SlotAnnouncer(settings, self.topics, self.slots, self.membership)
        answers = TransactionalAnswers if settings.exactly_once else Answers
        self.answers = answers(settings, self.topics, self.worker_id, self.metrics)
        self.cancellations = Cancellations(settings, self.cancel)
        self.results = ResultFollower(
            settings,
            self.answers.retained,
            self._others_answered if self.scheduler.fair is not None else None,
        )
        self.replies = Replies(self.answers, self.topics, self.slots, self.worker_id, self.metrics)
        #: set when records arrive, a slot frees or a pool comes back: the dispatch loop
        #: looks again
        self.wake = asyncio.Event()
        #: set when records arrive or a run starts: the preemption loop looks again
        self.preemption_wake = asyncio.Event()
        self.runs = Runs(
            self.fleet,
            self.slots,
            self.scheduler,
            self.answers,
            self.replies,
            self.announcer,
            self.metrics,
            self.membership,
            max_preemptions=settings.max_preemptions,
            wake=self.wake,
            started=self.preemption_wake.set,
            ran=lambda pool, seconds, tokens: self.pool_limits.ran(pool, seconds, tokens),
            cancelled_before=self.cancellations.pending,
            relieve=lambda: self.intake.relieve(),
            pool_changed=self._pool_changed,
        )
        self._metrics_server = (
            MetricsServer(self.metrics.registry, settings.worker_metrics_port)
            if settings.worker_metrics_port
            else None
        )
        self._producer: AIOKafkaProducer
        self._slot_producer: AIOKafkaProducer
        self._consumer: AIOKafkaConsumer
        self._stack = contextlib.AsyncExitStack()
        self.intake = Intake(
            settings,
            self.topics,
            self.fleet,
            self.scheduler.waiting,
            self.answers,
            wake=self._records_arrived,
            duplicate=lambda pending: self.runs.duplicate(pending, fetched=True),
            spawn=self.runs.spawn,
            stir=lambda: self.pace.stir(),
        )
        self.dispatch = DispatchLoop(
            self.scheduler, self.slots, self.runs, self.membership, self.wake
        )
        self.pool_limits = PoolLimits(
            self.fleet, self.slots, self.announcer, self.metrics, wake=self.wake.set
        )
        self.preemption = PreemptionLoop(
            self.scheduler, self.runs, self.membership, self.preemption_wake
        )
        self.pace = FetchPace(idle_ms=1)  # replaced in ``start``
        self._loops: list[asyncio.Task[None]] = []

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
            self.settings, busy=lambda: bool(self.runs.running) or len(self.scheduler.waiting) > 0
        )
        # aiokafka clients must be built inside the running event loop.
        self._producer = await make_producer(self.settings)
        # Slot-table writes get their own connection, and batch themselves (announcer.py):
        # what a linger gathers under load goes in one produce request with batches this
        # large, where aiokafka's default batch size would split it in several.
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
        # Answers too large for the responses topic are refused before they go out.
        limits = await record_batch_limits(self.settings, [self.topics.responses, self.topics.dlq])
        self.answers.attach(self._producer, self._consumer, limits)  # a rebalance may come at once
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
        await self.pool_limits.start()  # auto pools' first limits, before announcing
        if self.membership.assignor is None:  # shared; a leader announces once it leads
            await self.announcer.publish_all()
        self.membership.started()
        self._loops = [
            asyncio.create_task(self.intake.run(), name="worker-fetch"),
            asyncio.create_task(self.dispatch.run(), name="worker-dispatch"),
            asyncio.create_task(self.answers.commit_loop(), name="worker-commit"),
            asyncio.create_task(self.announcer.heartbeat(), name="worker-heartbeat"),
            asyncio.create_task(self.membership.watch(), name="worker-watchdog"),
            cancelling,
            asyncio.create_task(self.pace.run(), name="worker-pace"),
            following,
            asyncio.create_task(
                keep_gauges(
                    self.metrics,
                    self.slots,
                    self.scheduler.waiting,
                    self._consumer,
                    self.topics,
                    self.scheduler.fair,
                ),
                name="worker-gauges",
            ),
        ]
        if self._metrics_server is not None:
            self._metrics_server.start()
            self._stack.callback(self._metrics_server.stop)
        if self.health.needed:
            self._loops.append(asyncio.create_task(self.health.run(), name="worker-health"))
        if self.pool_limits.needed:
            self._loops.append(asyncio.create_task(self.pool_limits.run(), name="worker-limits"))
        if self.scheduler.preempt_after_ms is not None:
            self._loops.append(asyncio.create_task(self.preemption.run(), name="worker-preemption"))
        log.info(
            "worker %s: %d GPU slots (%s), policy %s, preemption %s, %s mode, group %s on %s",
            self.worker_id,
            self.fleet.total_slots,
            ", ".join(f"{p.name}: {len(p.gpu_ids)}" for p in self.fleet.pools),
            self.scheduler.policy.name,
            "off"
            if self.scheduler.preempt_after_ms is None
            else f"after {self.scheduler.preempt_after_ms} ms",
            self.settings.worker_mode,
            self.settings.consumer_group,
            self.settings.bootstrap_servers,
        )
        if self.scheduler.affinity is not None:
            log.info("prefix routing over pools %s", ", ".join(self.scheduler.affinity.indexes))

    async def stop(self) -> None:
        """Stop taking work, let running inferences answer, commit, withdraw the slots."""
        self.runs.stopping = True  # a run that ends takes no next request
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        # Running inferences may finish and answer, and the broker take the answers; not
        # while answers are not getting through (the broker is gone). What is cut short
        # stays uncommitted and is redelivered: at-least-once.
        drain = 0.1 if self.answers.retrying else _DRAIN_TIMEOUT_S
        drained_by = time.monotonic() + drain
        if self.runs.in_flight:
            _, unfinished = await asyncio.wait(self.runs.in_flight, timeout=drain)
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

    async def _pool_changed(self, pool: Pool, up: bool, reason: str = "") -> None:
        """A pool went down (its slots take nothing, and say so in the slot table) or came
        back (its free slots take requests again)."""
        if not up and pool.mark_down(reason):
            log.warning("pool %s is down: %s", pool.name, reason)
        for record in self.slots.set_down(pool.gpu_ids, down=not pool.up):
            self.announcer.publish(record)
        if pool.up:
            self.wake.set()

    def _others_answered(self, records: list[ConsumerRecord]) -> None:
        """Answers of other workers count in fair shares (its own were counted as given):
        a standby then holds the counters it needs when it takes over."""
        assert self.scheduler.fair is not None
        for record in records:
            value = record.value
            if not value or self._own_answer in value:
                continue
            try:
                answer = ResponseRecord.model_validate_json(value)
            except ValidationError:
                continue  # not an answer a worker wrote: nothing served to count
            self.scheduler.fair.answered(answer)

    def _count_placement(self, placement: Placement) -> None:
        pool = placement.option.pool
        self.metrics.placements.inc(pool, placement.reason)
        self.metrics.prefix_chars.add(placement.prompt_chars, pool)
        self.metrics.prefix_hit_chars.add(placement.matched_chars, pool)

    def _records_arrived(self) -> None:
        self.wake.set()
        self.preemption_wake.set()

    async def cancel(self, request_id: str) -> bool:
        """A cancellation record was read (``runs.Runs.cancel``)."""
        return await self.runs.cancel(request_id)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.answers.unsettle()
        dropped = self.scheduler.waiting.drop_partitions(revoked)
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
            self.wake.set()
        elif change is False:
            log.info("worker %s stands by", self.worker_id)
            await self.answers.stand_by()
            await self.announcer.withdraw()
        if self.membership.leading:
            await self.answers.settle()


async def _stop_task(task: asyncio.Task[None]) -> None:
    """Cancel and wait, dropping what the task ended with (not ``eventloop.stop_task``,
    which raises it: this one also runs while a failed start is being raised, which the
    task's own error must not replace)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker):
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker._on_assigned(assigned)
