"""What one bridge process holds: a request producer and a cluster reader."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Literal

from ..apikeys import KeyRing
from ..clients import close_within
from ..config import Settings
from ..consumers.chunks import ChunkStreams
from ..consumers.correlator import wait
from ..consumers.rate import retry_after
from ..consumers.reader import ClusterReader
from ..errors import (
    BrokerUnavailable,
    ModelNotServed,
    PoolsDown,
    QueueFull,
    RequestIdReused,
    RequestTimedOut,
)
from ..metrics import BridgeMetrics, gauges
from ..producers.client import submit_and_wait
from ..producers.request_producer import RequestProducer
from ..schemas import InferenceRequest, RequestRecord, RequestState, ResponseRecord, now_ms
from .batch_book import BatchBook
from .batch_runner import BatchRunners
from .board import Board
from .budgets import BudgetFollower, Budgets
from .chunk_stream import Stream
from .compacted import TopicFollower
from .files import FileStore

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT_S = 3.0
#: how long DELETE waits for the answer to a cancellation
CANCEL_WAIT_S = 3.0


class Bridge:
    """Produces HTTP requests onto Kafka and awaits their correlated responses."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = RequestProducer(settings)
        self.chunks = ChunkStreams()
        self.reader = ClusterReader(settings, state=True, results=True, chunks=self.chunks)
        self.metrics = BridgeMetrics()
        self.dashboard = Board(self)
        secret = settings.api_keys.get_secret_value() if settings.api_keys else None
        self.budgets = Budgets(KeyRing.load(secret, settings.api_keys_file).callers())
        self._budgets = BudgetFollower(settings, self.budgets) if self.budgets else None
        self.files = FileStore(settings)
        self.batches = BatchBook(settings)
        self.batch_runners = BatchRunners(
            settings,
            self.batches,
            self.files,
            self.producer,
            serves=self._serves,
            refusing=lambda: self.refusal() is not None,
            slots=self._slots,
        )
        gauges(self.metrics.registry, self._gauges)
        self._stack = contextlib.AsyncExitStack()
        self._cancelling: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._stack.enter_async_context(self.reader)
        await self._stack.enter_async_context(self.producer)
        self.dashboard.start()
        self._stack.push_async_callback(self.dashboard.stop)
        if self._budgets is not None:
            await self._budgets.start()
            self._stack.push_async_callback(self._budgets.stop)
        # One reader for the files and the batches (see compacted.py).
        follower = TopicFollower(self.settings, "files and batches")
        await self.files.start(follower)
        self._stack.push_async_callback(self.files.stop)
        await self.batches.start(follower)
        self._stack.push_async_callback(self.batches.stop)
        await follower.start(self._stack)
        await self.batch_runners.start()
        self._stack.push_async_callback(self.batch_runners.stop)

    async def stop(self) -> None:
        # An unreachable broker must not hold a shutdown for a produce timeout.
        await close_within(self._stack, _CLOSE_TIMEOUT_S)

    async def cancel(
        self, request_id: str, tenant: str | None = None
    ) -> ResponseRecord | Literal["unknown", "cancelling"]:
        """Cancel a request from any bridge. Returns its answer once the worker holding it
        has given one (``cancelled``, or how it finished if it finished first, retained);
        ``"unknown"`` when nothing of that id waits, runs or was answered lately;
        ``"cancelling"`` when no answer came within ``CANCEL_WAIT_S`` (a worker that fetches
        it later answers it ``cancelled``), or at once when a POST on this bridge waits for
        it (it gets the answer)."""
        self.reader.reachability.require()
        answer = self.reader.results.get(request_id)
        if answer is not None:
            return answer
        correlator = self.reader.correlator
        if correlator.awaits(request_id):
            await self.producer.cancel(request_id, tenant)
            return "cancelling"
        if await self.find(request_id) is None:
            return "unknown"
        future = correlator.register(request_id)
        try:
            await self.producer.cancel(request_id, tenant)
            return await wait(future, CANCEL_WAIT_S)
        except TimeoutError:
            return "cancelling"
        finally:
            correlator.discard(request_id)

    def lookup(self, request_id: str, tenant: str | None = None) -> RequestState | None:
        """Where ``request_id`` is, as this bridge knows now: answered (retained), running
        (a lease in the slot table), queued (on a request topic, not answered), or None.
        An answer given to another API key's tenant is not this caller's to see."""
        answer = self.reader.results.get(request_id)
        if answer is not None:
            return None if _for_another(answer, tenant) else RequestState.answered(answer)
        tp = self.reader.queued.get(request_id)
        slots = self.reader.slot_view
        # Not answered yet, but its lease ended: its answer is on its way.
        lease = slots.lease_of(request_id, now_ms()) or (tp and slots.ran.get(request_id))
        if lease:
            return RequestState(
                request_id=request_id,
                status="running",
                priority=lease.priority,
                model_id=lease.model,
                worker_id=lease.worker_id,
                gpu_id=lease.gpu_id,
                pool=lease.pool,
                started_at_ms=lease.leased_at_ms,
            )
        if tp is not None:
            priority = self.reader.topics.priority_of(tp.topic)
            return RequestState(request_id=request_id, status="queued", priority=priority)
        return None

    def taken(self, request_id: str, tenant: str | None) -> bool:
        """Whether ``request_id`` was answered for another API key's tenant."""
        answer = self.reader.results.get(request_id)
        return answer is not None and _for_another(answer, tenant)

    async def _sent(self, body: InferenceRequest, tenant: str | None) -> RequestState | None:
        """``lookup`` of ``body.request_id``, except that an id whose record was refused (a
        dead letter: it never ran) may be sent again. Raises ``RequestIdReused`` when the
        request of that id had another body (as the IETF Idempotency-Key draft and Stripe
        answer a key reused with another payload)."""
        request_id = body.request_id
        assert request_id is not None
        known = self.lookup(request_id, tenant)
        answer = self.reader.results.get(request_id)
        if known is not None and known.status not in ("queued", "running"):
            if answer is not None and answer.origin is None:
                return None
        if known is not None or self.reader.correlator.awaits(request_id):
            queued = self.reader.queued
            if answer is None and queued.get(request_id) is None:
                # Seen running in the slot table before its record was read here: the
                # record's header has its fingerprint.
                await self.reader.catch_up()
            earlier = answer.fingerprint if answer is not None else queued.fingerprint(request_id)
            if earlier is not None and earlier != body.fingerprint():
                raise RequestIdReused(
                    f"request id {request_id!r} was sent before with another model_id, "
                    "prompt or params; a retry must repeat the request, or use a new id"
                )
        return known

    async def find(self, request_id: str, tenant: str | None = None) -> RequestState | None:
        """``lookup``, and when that finds nothing, again once this bridge has read what
        was produced up to now (a request another client sent a moment ago)."""
        found = self.lookup(request_id, tenant)
        if found is None:
            await self.reader.catch_up()
            found = self.lookup(request_id, tenant)
        return found

    def admit(self, model_id: str) -> None:
        """Whether a request for ``model_id`` may be sent now: raises
        ``BrokerUnavailable``, ``ModelNotServed`` or ``QueueFull`` (each counted)."""
        try:
            self._admit(model_id)
        except (BrokerUnavailable, ModelNotServed, QueueFull) as exc:
            self.count_rejected(exc)
            raise

    def count_rejected(self, exc: BrokerUnavailable | ModelNotServed | QueueFull) -> None:
        """Count a request refused before it was sent, by reason."""
        reason = next(name for kind, name in _REJECTED if isinstance(exc, kind))
        self.metrics.rejected.inc(reason)

    def _admit(self, model_id: str) -> None:
        self.reader.reachability.require()
        served, down = self.reader.serving(model_id)
        if served is not None and model_id not in served:
            raise ModelNotServed(
                f"model {model_id!r} is not served by this fleet; served models: "
                f"{', '.join(sorted(served))}"
            )
        if down:
            after = self.settings.retry_after_seconds
            raise PoolsDown(
                f"every pool serving model {model_id!r} is down ({', '.join(down)}): its "
                f"servers do not answer their health checks; retry in {after} s",
                retry_after=after,
            )
        full = self._queue_full()
        if full is not None:
            raise full

    def _serves(self, model_id: str) -> bool:
        """Whether the fleet serves ``model_id`` (yes while the slot table does not say)."""
        served, _ = self.reader.serving(model_id)
        return served is None or model_id in served

    def _slots(self) -> int:
        """The fleet's slots that are free or busy (the status's two counts: every live
        slot but those of a pool that is down), from the slot table: asked for by each
        batch run on every turn of its loop."""
        return sum(s.state != "down" for s in self.reader.slot_view.live(now_ms()))

    def refusal(self) -> QueueFull | BrokerUnavailable | None:
        """What refuses any request now, whatever its body (a silent broker, a full queue);
        None while requests may be admitted. Not counted: ``count_rejected`` once given."""
        reachability = self.reader.reachability
        return reachability.error() if not reachability.up else self._queue_full()

    def _queue_full(self) -> QueueFull | None:
        waiting = self.reader.queue_size()
        limit = self.settings.queue_max_size
        if waiting < limit:
            return None
        rate = self.reader.completions.per_second()
        after = retry_after(waiting, limit, rate, self.settings.retry_after_seconds)
        return QueueFull(
            f"queue full: {waiting} requests waiting (INFERENCE_QUEUE_MAX_SIZE={limit}), "
            f"answered at {rate:.1f}/s lately; retry in {after} s",
            retry_after=after,
        )

    def _build(self, body: InferenceRequest, tenant: str | None) -> RequestRecord:
        return self.producer.build(
            body.model_id,
            body.prompt,
            body.priority,
            params=body.params,
            tenant=tenant,
            timeout_seconds=body.timeout_seconds,
            request_id=body.request_id,
            # Only an id of the client's own can be sent again.
            fingerprint=body.fingerprint() if body.request_id is not None else None,
            session=body.session_id,
        )

    async def infer(
        self, body: InferenceRequest, tenant: str | None = None
    ) -> tuple[ResponseRecord, bool]:
        """Admit, produce, await; returns the answer, and whether it is a retained one
        (``body.request_id`` was answered before). A request id that waits or runs is
        awaited, not sent again. Raises ``ModelNotServed``, ``QueueFull``,
        ``BrokerUnavailable`` or ``RequestTimedOut``."""
        if body.request_id is not None:
            self.reader.reachability.require()
            known = await self._sent(body, tenant)
            if known is not None or self.reader.correlator.awaits(body.request_id):
                return await self._await_known(body, known)
        self.admit(body.model_id)
        return await self.answer(self._build(body, tenant)), False

    async def _await_known(
        self, body: InferenceRequest, known: RequestState | None
    ) -> tuple[ResponseRecord, bool]:
        request_id = body.request_id
        assert request_id is not None
        answer = self.reader.results.get(request_id)
        if answer is not None and answer.origin is not None:
            return answer, True
        correlator = self.reader.correlator
        future = correlator.register(request_id)
        timeout = body.timeout_seconds or self.settings.request_timeout_seconds
        try:
            answer = self.reader.results.get(request_id)  # read while registering
            return (answer or await wait(future, timeout)), False
        except TimeoutError:
            where = known.status if known is not None else "in flight on this bridge"
            raise RequestTimedOut(
                f"no result within {timeout:g} s for request {request_id} ({where}; it was "
                "sent before and is not sent again)",
                request_id=request_id,
            ) from None
        finally:
            correlator.discard(request_id)

    async def submit(self, body: InferenceRequest, tenant: str | None = None) -> RequestState:
        """``Prefer: respond-async``: produce and return at once (``queued``), or where the
        request of ``body.request_id`` is when it was sent before."""
        if body.request_id is not None:
            self.reader.reachability.require()
            known = await self._sent(body, tenant)
            if known is not None:
                return known
        self.admit(body.model_id)
        request = self._build(body, tenant)
        submitted = await self.producer.send(request, abort=self.reader.reachability.lost())
        assert request.request_id is not None
        self.reader.note_produced(
            submitted.tp, submitted.offset, request.request_id, request.fingerprint
        )
        return RequestState(
            request_id=request.request_id,
            status="queued",
            priority=body.priority,
            model_id=body.model_id,
        )

    async def answer(self, request: RequestRecord) -> ResponseRecord:
        """Send an admitted request and await its answer (``RequestTimedOut``)."""
        started = time.perf_counter()
        status = "timeout"
        try:
            response = await submit_and_wait(self.producer, self.reader, request)
            status = response.status
            return response
        finally:
            assert request.priority is not None
            self.metrics.requests.observe(
                time.perf_counter() - started, request.priority, request.model_id, status
            )

    def _gauges(self) -> list[tuple[str, str, list[str], dict[Any, float]]]:
        """The cluster as this bridge sees it, read when scraped."""
        reader = self.reader
        status = reader.status()
        backlog = reader.backlog.unanswered()
        return [
            ("queue_depth", "requests waiting for a slot (not started), across the fleet",
             ["priority"], {p.value: n for p, n in status.queue_depth.items()}),
            ("backlog", "requests on the request topics the worker group has not answered "
             "(its consumer lag)", ["priority"], {p.value: n for p, n in backlog.items()}),
            ("gpus", "GPU slots of the fleet by state, from the slot table", ["state"],
             {"available": status.gpus_available, "busy": status.gpus_busy,
              "expired": status.gpus_expired}),
            ("broker_reachable", "1 while the broker answers this bridge", [],
             {(): 1.0 if reader.reachability.up else 0.0}),
            ("awaited", "requests this bridge awaits an answer for", [],
             {(): float(len(reader.correlator))}),
            ("retained_results", "answers this bridge keeps by id", [],
             {(): float(len(reader.results))}),
        ]  # fmt: skip

    async def start_stream(self, request: RequestRecord) -> Stream:
        """Send an admitted request with ``stream`` set; its chunks are followed from
        before it is sent."""
        assert request.request_id is not None and request.stream
        request_id = request.request_id
        queue = self.chunks.open(request_id)
        try:
            submitted = await self.producer.send(request, abort=self.reader.reachability.lost())
        except BaseException:
            self.chunks.close(request_id)
            raise
        self.reader.note_produced(submitted.tp, submitted.offset, request_id)

        def ended(left: bool) -> None:
            self.chunks.close(request_id)
            if left:  # the client went away, or it timed out: it need not run on
                self._cancel_soon(request_id)

        return Stream(request, queue, self.settings.request_timeout_seconds, ended)

    def _cancel_soon(self, request_id: str) -> None:
        """Cancel in a task of its own: the caller may be a task being cancelled."""
        task = asyncio.create_task(self.producer.cancel(request_id))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelled)

    def _cancelled(self, task: asyncio.Task[None]) -> None:
        self._cancelling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not cancel a stream left early: %r", task.exception())


#: the reason a refusal is counted under, by its kind
_REJECTED = (
    (BrokerUnavailable, "broker_unreachable"),
    (ModelNotServed, "model_not_served"),
    (PoolsDown, "pools_down"),
    (QueueFull, "queue_full"),
)


def _for_another(answer: ResponseRecord, tenant: str | None) -> bool:
    """Whether ``answer`` was given to another API key's tenant than the caller's."""
    return tenant is not None and answer.tenant not in (None, tenant)
