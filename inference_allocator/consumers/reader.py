"""What a bridge, a client or the status command reads from the cluster.

Two consumers, both assigned (never group members, so any number of readers can run):

* responses: every partition of the responses topic from the end (``results=True``: from
  the start of the retention window, kept in ``results``), with the short fetch wait of the
  latency-critical path; a response is decoded only if somebody here awaits it;
* state (``state=True``): the slot table from the beginning and the request topics from the
  worker group's committed offsets (their ids in ``queued``), with a relaxed fetch wait,
  plus the high watermarks (from ListOffsets, or on Tansu from fetches) and the group's
  committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from ..clients import (
    answers_isolation,
    assigned_consumer,
    broker_traits,
    fetch_pace,
    make_consumer,
    retrieve_outcome,
    started,
    topic_partitions,
)
from ..config import Settings
from ..errors import BrokerError
from ..pacing import FetchPace
from ..reachability import PROBE_TIMEOUT_S, Reachability
from ..schemas import ModelList, ResponseRecord, SlotRecord, SystemStatus, now_ms
from ..topics import Topics, ensure_topics
from .chunks import ChunkStreams
from .correlator import ResponseCorrelator
from .queued import QueuedRequests
from .rate import CompletionRate
from .results import RetainedResults, caught_up, seek_to_retained, wait_caught_up
from .stats_windows import StatsWindows
from .views import (
    BacklogView,
    SlotTableView,
    down_pools,
    model_list,
    served_models,
    system_status,
    waiting,
)

log = logging.getLogger(__name__)

#: models whose pools ``serving`` remembers between two changes of the slot table
_SERVING_CACHED = 64

_SYNC_TIMEOUT_S = 15.0
#: how long a lookup by id waits for this reader to catch up with what was just produced
CATCH_UP_TIMEOUT_S = 1.0
#: how often an idle reader refreshes (and so finds the broker gone: within ~1 s)
IDLE_REFRESH_S = 0.5


class ClusterReader:
    """Follows responses (always) and, with ``state=True``, the slot table and backlog."""

    def __init__(
        self,
        settings: Settings,
        *,
        state: bool = True,
        results: bool = False,
        chunks: ChunkStreams | None = None,
    ):
        """``chunks``: follow streamed answers too (read by the consumer of the answers)."""
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.state = state
        self.retains = results and settings.result_retention_seconds > 0
        self.results = RetainedResults(
            int(settings.result_retention_seconds * 1000) if self.retains else 0
        )
        self.queued = QueuedRequests()
        self.correlator = ResponseCorrelator()
        self.slot_view = SlotTableView()
        #: what ``serving`` found, for the live slots it looked at
        self._serving_of: list[SlotRecord] | None = None
        self._served: set[str] | None = None
        self._down: dict[str, list[str]] = {}
        self.backlog = BacklogView(self.topics)
        self.reachability = Reachability(settings.bootstrap_servers)
        self.completions = CompletionRate()
        self._responses: AIOKafkaConsumer
        self._state: AIOKafkaConsumer
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self.chunks = chunks
        self.pace = FetchPace(idle_ms=1)  # replaced in ``start``
        self._response_tps: list[TopicPartition] = []
        self._started_ms = now_ms()
        self._request_tps: list[TopicPartition] = []
        self._slot_tps: list[TopicPartition] = []
        self._backlog_by_fetch = True
        self._refreshing: asyncio.Task[None] | None = None
        #: slot records read so far, and how many of them the start-up replay took
        self.slot_records_read = 0
        self.slot_records_replayed = 0
        #: the statistics windows, read once a status or the dashboard first asks
        self.stats = StatsWindows(settings)

    def _awaiting(self) -> bool:
        return len(self.correlator) > 0 or (self.chunks is not None and self.chunks.streaming > 0)

    async def start(self) -> None:
        await ensure_topics(self.settings)
        self.pace = await fetch_pace(self.settings, self._awaiting)
        self._tasks.append(asyncio.create_task(self.pace.run(), name="reader-pace"))
        # aiokafka clients must be built inside the running event loop.
        self._responses, response_tps = await assigned_consumer(
            self.settings,
            self.topics.responses,
            self._stack,
            isolation_level=answers_isolation(self.settings),
        )
        self._response_tps = response_tps
        self._started_ms = now_ms()
        if self.chunks is not None:
            # One fetch brings answers and chunks. Chunks are never written in a
            # transaction (exactly-once holds the answer, not the stream): read_committed
            # reads them at once.
            topic = self.topics.chunks
            chunk_tps = (await topic_partitions(self._responses, [topic], self.settings))[topic]
            self._responses.assign(response_tps + chunk_tps)
            await self._responses.seek_to_end(*chunk_tps)
        if self.retains:
            await seek_to_retained(self._responses, response_tps, self.settings)
        else:
            await self._responses.seek_to_end(*response_tps)
        self.pace.follow(self._responses)
        self._tasks.append(asyncio.create_task(self._read_responses(), name="reader-responses"))
        if self.retains:
            seconds = await wait_caught_up(
                self._responses, response_tps, "the retained answers", self.settings
            )
            log.info("read back %d retained answers in %.2f s", len(self.results), seconds)
        if self.state:
            await self._start_state()

    async def _start_state(self) -> None:
        # The worker group's id lets this consumer read the group's committed offsets;
        # it never joins the group and never commits.
        self._state = await make_consumer(
            self.settings,
            group_id=self.settings.consumer_group,
            fetch_max_wait_ms=self.settings.status_refresh_ms,
            # Requests are read in batches once per refresh interval: a broker that answers
            # a fetch as soon as data arrives (Apache Kafka) would otherwise be polled for
            # every request produced.
            fetch_min_bytes=1024 * 1024,
        )
        state = self._state
        await self._stack.enter_async_context(started(state, self.settings))
        # A worker renews its slots every third of the lease TTL: read idle, the table may
        # lag by the whole wait, and a live worker's slots must not look expired meanwhile.
        # Not a status-only wait (2 s): the refresh's ListOffsets shares this consumer's
        # connection, and Apache Kafka answers a connection's requests in turn, so a probe
        # sent behind a status-only fetch outlived its timeout (the bridge took an idle
        # broker for gone every few seconds).
        self.pace.follow(
            state, on_path=False, cap_ms=int(self.settings.lease_ttl_seconds * 1000 / 6)
        )
        found = await topic_partitions(
            state, [*self.topics.requests, self.topics.gpu_slots], self.settings
        )
        self._request_tps = [tp for topic in self.topics.requests for tp in found[topic]]
        self._slot_tps = found[self.topics.gpu_slots]
        # Where ListOffsets is right (Apache Kafka), one request per refresh gives the high
        # watermarks; on Tansu it is wrong after batched produces, so the high watermark
        # fetch responses carry stands in.
        self._backlog_by_fetch = not (await broker_traits(self.settings)).kafka_like
        # The request records not yet answered are read for their ids (``queued``).
        state.assign(self._request_tps + self._slot_tps)
        await state.seek_to_beginning(*self._request_tps, *self._slot_tps)
        committed = await state._coordinator.fetch_committed_offsets(self._request_tps)
        for tp, meta in committed.items():
            if meta.offset >= 0:
                state.seek(tp, meta.offset)
        self.backlog.log_start.update(await state.beginning_offsets(self._request_tps))
        self._tasks.append(asyncio.create_task(self._read_state(), name="reader-state"))
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="reader-refresh"))
        await self._wait_synced()

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._refreshing] if self._refreshing else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        self.correlator.fail_all(BrokerError("the response reader stopped"))
        await self.stats.stop()
        await self._stack.aclose()

    async def __aenter__(self) -> ClusterReader:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def status(self) -> SystemStatus:
        status = system_status(self.slot_view, self.backlog, self.stats.latest.values())
        if not self.reachability.up:
            status.broker_reachable = False
            status.broker_error = str(self.reachability.error())
        return status

    def serving(self, model: str) -> tuple[set[str] | None, list[str]]:
        """From one look at the live slots: the models the fleet serves (None when it
        takes any, or is not known), and the pools serving ``model`` when all of them are
        down (else empty)."""
        live = self.slot_view.live(now_ms())
        if live is not self._serving_of:  # the slot table changed: look again
            self._serving_of, self._served, self._down = live, served_models(live), {}
        down = self._down.get(model)
        if down is None:
            down = down_pools(live, model)
            if len(self._down) < _SERVING_CACHED:  # a flood of unknown names stays bounded
                self._down[model] = down
        return self._served, down

    def models(self) -> ModelList:
        return model_list(self.slot_view.live(now_ms()))

    def queue_size(self) -> int:
        """Requests waiting across the three request topics (the admission check)."""
        return sum(waiting(self.backlog, self.slot_view.leased(now_ms())).values())

    async def fresh_status(self, stats_wait_s: float = 0.0) -> SystemStatus:
        """The status after re-reading the committed offsets (one round trip); while the
        broker does not answer, the last known one at once, saying so. The statistics
        windows (the tenants' shares) are followed from the first call on, which waits for
        their read-back up to ``stats_wait_s`` (a one-off look does; a bridge's route does
        not, so no call takes longer for them)."""
        if self.reachability.up:
            await self._probe()
            await self.stats.ensure_started(stats_wait_s)
        return self.status()

    def note_produced(
        self,
        tp: TopicPartition,
        offset: int,
        request_id: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        """Count a request we produced at once, before the next fetch reports it."""
        if self.backlog.highwater.get(tp, 0) <= offset:
            self.backlog.highwater[tp] = offset + 1
        if request_id is not None:
            self.pace.stir()
            self.queued.note(tp, offset, request_id, fingerprint)

    async def _read_responses(self) -> None:
        correlator = self.correlator
        chunks_topic = self.topics.chunks if self.chunks is not None else None
        while True:
            batch = await self._responses.getmany(timeout_ms=1000)
            if batch:
                self.pace.stir()
                # Records from the broker are an answer: once it is back, the answers
                # awaited here resolve, and the client's next request must not be refused
                # because the periodic probe has not come round yet.
                self.reachability.answered()
            for tp, records in batch.items():
                if tp.topic == chunks_topic:
                    self.chunks.add_records(records)  # type: ignore[union-attr]
                    continue
                self._count_completions(records)
                if self.retains:
                    self.results.add_records(records)
                for record in records:
                    # Every bridge reads every response: decode only what is awaited here.
                    key = record.key.decode(errors="replace") if record.key else None
                    if key is not None and correlator.awaits(key):
                        self._resolve(record.value)

    def _count_completions(self, records: list[ConsumerRecord]) -> None:
        """Count the answers to the completion rate, not those read back from before."""
        if records[0].timestamp >= self._started_ms:
            self.completions.add(len(records))
        else:
            self.completions.add(sum(r.timestamp >= self._started_ms for r in records))

    def _resolve(self, value: bytes | None) -> None:
        try:
            self.correlator.resolve(ResponseRecord.model_validate_json(value or b""))
        except ValidationError as exc:
            log.warning("ignoring a malformed response: %s", exc.errors()[0]["msg"])

    async def _read_state(self) -> None:
        slots = self.topics.gpu_slots
        while True:
            batch = await self._state.getmany(timeout_ms=1000)
            if batch:
                self.reachability.answered()
            for tp, records in batch.items():
                if tp.topic == slots:
                    self.slot_records_read += len(records)
                    for record in records:
                        self._apply_slot(record.key, record.value)
                else:
                    self.pace.stir()  # requests (a slot record is no work)
                    self.queued.add_records(tp, records)

    def _apply_slot(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self.slot_view.apply(key.decode(errors="replace"), None)
            return
        try:
            record = SlotRecord.model_validate_json(value)
        except ValidationError:
            log.warning("ignoring a malformed slot record under key %r", key)
            return
        self.slot_view.apply(record.slot_id, record)

    async def _refresh_loop(self) -> None:
        busy_s = self.settings.status_refresh_ms / 1000
        while True:
            # Idle, a refresh is a probe of the broker more than news (see pacing).
            await asyncio.sleep(max(busy_s, IDLE_REFRESH_S) if self.pace.idle else busy_s)
            await self._probe()

    async def _probe(self) -> None:
        """Refresh, bounded: what it finds is whether the broker answers.

        A refresh that takes longer is not cancelled (cancelling aiokafka's coordinator
        lookup mid-way measurably kept a bridge from ever reconnecting): the next probe
        waits on the same one."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self.refresh(), name="reader-probe")
            # A refresh that outlived every probe waiting on it (the broker is gone, the
            # reader idle: probes 0.5 s apart) ends with nobody to read its error; the next
            # probe's refresh reports the broker's state, so it is read and dropped here.
            self._refreshing.add_done_callback(retrieve_outcome)
        # This probe's own task: a concurrent probe (GET /status and the refresh loop) may
        # start the next one while this one resumes.
        refreshing = self._refreshing
        asked_at = time.monotonic()
        done, _ = await asyncio.wait({refreshing}, timeout=PROBE_TIMEOUT_S)
        if not done:
            timeout = TimeoutError(f"no answer within {PROBE_TIMEOUT_S:g} s")
            self.reachability.unanswered(timeout, asked_at)
            return
        if refreshing.cancelled():
            return
        exc = refreshing.exception()
        if exc is None:
            self.reachability.answered()
        elif isinstance(exc, (KafkaError, OSError)):
            self.reachability.unanswered(exc, asked_at)
        else:
            raise exc

    async def refresh(self) -> None:
        """Take the latest high watermarks and re-read the worker group's commits."""
        if not self.state:
            return
        state = self._state
        if self._backlog_by_fetch:
            highs = {tp: state.highwater(tp) for tp in self._request_tps}
        else:
            highs = await state.end_offsets(self._request_tps)
        for tp, high in highs.items():
            if high is not None:
                self.note_produced(tp, high - 1)
        # One OffsetFetch for every partition (the public committed() asks per partition).
        offsets = await state._coordinator.fetch_committed_offsets(self._request_tps)
        for tp, meta in offsets.items():
            if meta.offset >= 0:
                self.backlog.committed[tp] = meta.offset
        self.queued.prune(self.backlog.committed)

    async def catch_up(self) -> None:
        """Read what was produced up to now (requests and answers), bounded by
        ``CATCH_UP_TIMEOUT_S``: a lookup by id that found nothing asks again after it."""
        if not self.reachability.up:
            return
        in_flight_ms = max(self.pace.wait_ms(), self.settings.status_refresh_ms)
        self.pace.stir()
        if self._backlog_by_fetch:
            # Tansu: only fetch responses carry the high watermarks; one that started after
            # now has come back once the one in flight and the next have, and the probe
            # takes its watermarks.
            await asyncio.sleep((in_flight_ms + self.settings.status_refresh_ms) / 1000 + 0.02)
        await self._probe()  # the high watermarks of now
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while time.monotonic() < deadline:
            if await caught_up(self._responses, self._response_tps) and await self._requests_read():
                return
            await asyncio.sleep(0.01)

    async def _requests_read(self) -> bool:
        if not self.state:
            return True
        for tp in self._request_tps:
            if await self._state.position(tp) < self.backlog.highwater.get(tp, 0):
                return False
        return True

    async def _wait_synced(self) -> None:
        """Wait until the slot table is read up to its end and every backlog is known."""
        deadline = time.monotonic() + _SYNC_TIMEOUT_S
        state = self._state
        while time.monotonic() < deadline:
            if await caught_up(state, self._slot_tps + self._request_tps):
                self.slot_records_replayed = self.slot_records_read
                await self.refresh()
                return
            await asyncio.sleep(0.02)
        raise BrokerError(
            f"could not read the slot table of {self.settings.bootstrap_servers} within "
            f"{_SYNC_TIMEOUT_S:.0f} s"
        )
