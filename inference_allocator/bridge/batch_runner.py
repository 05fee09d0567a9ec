"""Who runs the batches, and how one runs.

Every bridge joins the ``<prefix>.batch-runners`` consumer group on the one partition of
``<prefix>.batches``: the member the group gives it runs every batch that is not finished;
the others stand by. When that bridge dies or is cut off, the group gives the partition to
another after the session timeout, and that one carries on from the batch's record and
the answers on the responses topic: nothing a bridge holds in memory is needed.

A run (``BatchRun``):

1. ``validating``: reads the input file and checks every line (``batch_lines``); a bad
   file fails the batch with every problem. Otherwise it notes where the responses topic
   ends (the batch's answers come after) and the batch is ``in_progress``.
2. ``in_progress``: reads the batch's answers from there, and sends the lines that have
   none as requests ``<batch id>.<n>`` (n: the line's place in the file) at the batch's
   level, as the batch's own tenant (so fair shares keep it from crowding out the other
   tenants of its level), with the end of the completion window as their deadline. At
   most ``INFERENCE_BATCH_MAX_IN_FLIGHT`` lines are sent and unanswered at a time, so a
   large batch never puts its whole file ahead of interactive requests, and none while
   the bridge refuses requests (a full queue, a silent broker). A runner that takes over
   sends again the lines it finds unanswered, with the same ids: the allocator runs an id
   once (a line waiting or running is not run again, one answered is answered from its
   retention).
3. ``finalizing``: the output file (the lines answered ``ok``) and the error file (the
   others) are written, in the input's order, with ids derived from the batch's (a runner
   that takes over here writes the same files again), and the batch is ``completed``.
   Cancelled (``cancelling``: the lines in flight are cancelled and their answers awaited
   a while) or past its window (``expired``), it keeps the lines answered so far, and
   the error file names the lines that did not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from pydantic import ValidationError

from ..clients import assigned_consumer, make_consumer
from ..config import Settings
from ..eventloop import stop_task
from ..producers.request_producer import RequestProducer
from ..schemas import RequestRecord, ResponseRecord
from ..topics import Topics
from . import openai_wire as wire
from .batch_book import FINAL, BatchBook, BatchRecord
from .batch_lines import BatchLine, LineError, read_lines
from .batch_objects import RequestCounts, output_line, request_id, unrun_line
from .files import FileStore

log = logging.getLogger(__name__)

#: how often a run writes its progress (request counts) at most
PROGRESS_S = 1.0
#: how long a cancelled or expired batch waits for the answers of its lines in flight
GRACE_S = 10.0
#: how long a run that failed (the broker away) waits before it starts again, at first
#: and at most
RESTART_S, RESTART_MAX_S = 1.0, 30.0
#: lines sent in one go at most
SEND_AT_ONCE = 64


def now_s() -> int:
    return int(time.time())


class BatchRunners(ConsumerRebalanceListener):
    """This bridge's part in the batch-runners group, and the runs it owns."""

    def __init__(
        self,
        settings: Settings,
        book: BatchBook,
        files: FileStore,
        producer: RequestProducer,
        serves: Callable[[str], bool],
        refusing: Callable[[], bool],
        slots: Callable[[], int],
    ):
        """``serves``: whether the fleet serves a model; ``refusing``: whether the bridge
        refuses requests now (a full queue, a silent broker); ``slots``: the fleet's."""
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.book = book
        self.files = files
        self.producer = producer
        self.serves = serves
        self.refusing = refusing
        self.slots = slots
        self.owning = False
        self.runs: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer

    async def start(self) -> None:
        """Join the group in the background: a join can take seconds (Tansu holds it for
        half the session timeout), and the bridge serves meanwhile."""
        self.book.changed = self._changed
        self._task = asyncio.create_task(self._member(), name="bridge-batch-runners")

    async def stop(self) -> None:
        self.book.changed = None
        await stop_task(self._task)  # first, so that no assignment starts a run after
        await self._stop_runs()

    async def _member(self) -> None:
        """Joins the group and polls, as a member must (its partition paused once
        assigned: nothing is fetched); joins again after a failure."""
        while True:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    # The long wait is for the moment before the partition is paused.
                    consumer = await make_consumer(
                        self.settings,
                        group_id=f"{self.settings.topic_prefix}.batch-runners",
                        fetch_max_wait_ms=1000,
                    )
                    # Stopped even when a stop cancels the join (started() would not).
                    stack.push_async_callback(consumer.stop)
                    consumer.subscribe([self.topics.batches], listener=self)
                    self._consumer = consumer  # before the join: the listener pauses with it
                    await consumer.start()
                    while True:
                        await consumer.getmany(timeout_ms=1000, max_records=1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away: the runs stop, and it joins again
                log.warning("the batch runners' group: %r; joining again in %.0f s", exc,
                            RESTART_MAX_S)  # fmt: skip
                self.owning = False
                await self._stop_runs()
                await asyncio.sleep(RESTART_MAX_S)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            log.info("this bridge stops running the batches")
            self.owning = False
            await self._stop_runs()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            self._consumer.pause(*assigned)
            log.info("this bridge runs the batches now")
            self.owning = True
            for batch_id in list(self.book.batches):
                self._changed(batch_id)

    async def _stop_runs(self) -> None:
        runs, self.runs = list(self.runs.values()), {}
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)

    def _changed(self, batch_id: str) -> None:
        record = self.book.batches.get(batch_id)
        if not self.owning or batch_id in self.runs or record is None:
            return
        if record.batch.status in FINAL:
            return
        task = asyncio.create_task(self._run(batch_id), name=f"batch-{batch_id}")
        self.runs[batch_id] = task

    async def _run(self, batch_id: str) -> None:
        delay = RESTART_S
        try:
            while True:
                try:
                    await BatchRun(self, batch_id).run()
                    return
                except Exception as exc:  # the broker away (a KafkaError, BrokerUnavailable)
                    log.warning("batch %s: %r; starting it again in %.0f s", batch_id, exc,
                                delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(2 * delay, RESTART_MAX_S)
        finally:
            if self.runs.get(batch_id) is asyncio.current_task():
                del self.runs[batch_id]

    def room(self) -> int:
        """How many lines each run may have sent and unanswered now."""
        if self.refusing():
            return 0
        return self.settings.batch_max_in_flight or max(4, 2 * self.slots())


class BatchRun:
    """One batch, run by this bridge until it is finished or the partition moves."""

    def __init__(self, runners: BatchRunners, batch_id: str):
        self.runners = runners
        self.book = runners.book
        self.batch_id = batch_id
        self.lines: list[BatchLine] = []
        #: the answers read so far, by line
        self.answers: dict[int, ResponseRecord] = {}
        #: how many of them are ``ok``
        self._ok = 0
        self._arrived = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    @property
    def record(self) -> BatchRecord:
        return self.book.batches[self.batch_id]

    async def run(self) -> None:
        async with self._stack:
            record = self.record
            lines = await self._read_lines(record)
            if lines is None:
                return  # failed validation
            self.lines = lines
            consumer, tps = await assigned_consumer(
                self.runners.settings, self.runners.topics.responses, self._stack,
                fetch_max_wait_ms=100,
            )  # fmt: skip
            record = self.record
            if record.responses_from is None:  # validated just now: its answers start here
                ends = await consumer.end_offsets(tps)
                batch = record.batch.model_copy(
                    update={
                        "status": "in_progress",
                        "in_progress_at": now_s(),
                        "request_counts": RequestCounts(total=len(lines)),
                    }
                )
                record = record.model_copy(
                    update={
                        "batch": batch,
                        "responses_from": {tp.partition: o for tp, o in ends.items()},
                    }
                )
                await self.book.put(record)
            assert record.responses_from is not None
            for tp in tps:
                consumer.seek(tp, record.responses_from.get(tp.partition, 0))
            reading = asyncio.create_task(self._read_answers(consumer))
            self._stack.push_async_callback(stop_task, reading)
            await self._caught_up(consumer, tps)
            if record.batch.status == "finalizing":  # taken over while writing the files
                ending = "completed"
            else:
                ending = await self._send_lines()
            await self._finish(ending)

    async def _read_lines(self, record: BatchRecord) -> list[BatchLine] | None:
        """The batch's lines; None (and the batch failed) when its file is wrong."""
        batch = record.batch
        stored = self.runners.files.files.get(batch.input_file_id)
        try:
            if stored is None:
                raise LookupError(f"no file {batch.input_file_id!r}")
            content = await self.runners.files.content(stored)
        except LookupError as exc:  # deleted since the batch was created
            problems = [LineError("invalid_file", str(exc), param="input_file_id")]
        else:
            lines, problems = read_lines(content, batch.endpoint, self.runners.serves)
            if not problems:
                return lines
        errors = [problem.openai() for problem in problems]
        failed = batch.model_copy(
            update={
                "status": "failed",
                "failed_at": now_s(),
                "errors": {"object": "list", "data": errors},
            }
        )
        await self.book.put(record.model_copy(update={"batch": failed}))
        log.info("batch %s failed validation: %s", batch.id, errors[0]["message"])
        return None

    async def _read_answers(self, consumer: AIOKafkaConsumer) -> None:
        prefix = f"{self.batch_id}.".encode()
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.key is None or not record.key.startswith(prefix):
                        continue
                    try:
                        n = int(record.key[len(prefix) :])
                        answer = ResponseRecord.model_validate_json(record.value or b"")
                    except (ValueError, ValidationError):
                        continue
                    if 0 <= n < len(self.lines) and n not in self.answers:
                        self.answers[n] = answer
                        self._ok += answer.status == "ok"
                        self._arrived.set()

    async def _caught_up(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        """Until the answers given before now are read."""
        ends = await consumer.end_offsets(tps)
        while True:
            behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
            if not behind:
                return
            await asyncio.sleep(0.05)

    async def _send_lines(self) -> str:
        """Sends the lines, paced, until all are answered (``completed``), the batch is
        cancelled (``cancelled``) or its window ends (``expired``)."""
        flying: set[int] = set()  # sent and not answered
        waiting = [n for n in range(len(self.lines)) if n not in self.answers]
        next_up = 0  # the first of ``waiting`` not sent yet
        written = 0.0
        counts = self._counts()
        while True:
            flying = {n for n in flying if n not in self.answers}
            if self.batch_id in self.book.cancelled_at:
                await self._wind_down(flying, "cancelling")
                return "cancelled"
            if self.record.batch.expires_at and now_s() >= self.record.batch.expires_at:
                await self._wind_down(flying, None)
                return "expired"
            if len(self.answers) == len(self.lines):
                return "completed"
            room = min(self.runners.room() - len(flying), SEND_AT_ONCE)
            if room > 0 and next_up < len(waiting):
                chunk = waiting[next_up : next_up + room]
                await self.runners.producer.send_many([self._request(n) for n in chunk])
                next_up += len(chunk)
                flying.update(chunk)
            if self._counts() != counts and time.monotonic() - written >= PROGRESS_S:
                counts = self._counts()
                written = time.monotonic()
                batch = self.record.batch.model_copy(update={"request_counts": counts})
                await self.book.put(self.record.model_copy(update={"batch": batch}))
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._arrived.wait(), 0.1 if next_up < len(waiting) else PROGRESS_S
                )

    async def _wind_down(self, flying: set[int], status: str | None) -> None:
        """A cancelled or expired batch: its lines in flight cancelled (cancelled) or
        left to finish (expired), and their answers awaited up to ``GRACE_S``."""
        in_flight = sorted(flying)
        if status is not None:
            batch = self.record.batch
            at = self.book.cancelled_at.get(self.batch_id, now_s())
            update = {"status": status, "cancelling_at": at}
            await self.book.put(
                self.record.model_copy(update={"batch": batch.model_copy(update=update)})
            )
            for n in in_flight:
                await self.runners.producer.cancel(self._request_id(n), self.batch_id)
        deadline = time.monotonic() + GRACE_S
        while any(n not in self.answers for n in in_flight) and time.monotonic() < deadline:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), 0.2)

    def _counts(self) -> RequestCounts:
        ok = self._ok
        return RequestCounts(total=len(self.lines), completed=ok, failed=len(self.answers) - ok)

    def _request_id(self, n: int) -> str:
        return request_id(self.batch_id, n)

    def _request(self, n: int) -> RequestRecord:
        body = self.lines[n].body
        record = self.record
        left = max(0.001, (record.batch.expires_at or now_s()) - time.time())
        if isinstance(body, wire.ChatBody):
            prompt, messages, api = wire.prompt_of(body.messages), body.messages, "chat"
        else:
            prompt, messages, api = body.prompt, None, "completions"
        request = self.runners.producer.build(
            body.model,
            prompt,
            record.priority,
            request_id=self._request_id(n),
            timeout_seconds=left,
            params=body.params() or None,
            tenant=self.batch_id,
            messages=messages,
            api=api,  # type: ignore[arg-type]
            session=body.user(),
        )
        # Below every other request of its level: one that finds no free slot may take
        # the slot of a line's run (preemption), so a batch fills idle slots only.
        return request.model_copy(update={"background": True})

    async def _finish(self, ending: str) -> None:
        """Write the output and error files, then the batch's last state."""
        record = self.record
        batch = record.batch
        if ending == "completed" and batch.status != "finalizing":
            finalizing = batch.model_copy(update={"status": "finalizing", "finalizing_at": now_s()})
            await self.book.put(record.model_copy(update={"batch": finalizing}))
        chat = batch.endpoint == "/v1/chat/completions"
        ok: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for n, line in enumerate(self.lines):
            answer = self.answers.get(n)
            if answer is None:
                failed.append(unrun_line(self._request_id(n), line.custom_id, ending))
                continue
            out = output_line(line.custom_id, answer, line.body.model, chat)
            (ok if answer.status == "ok" else failed).append(out)
        output_id = await self._write(ok, "output")
        error_id = await self._write(failed, "errors")
        at = now_s()
        final: dict[str, Any] = {
            "status": ending,
            f"{ending}_at": at,
            "output_file_id": output_id,
            "error_file_id": error_id,
            "request_counts": RequestCounts(
                total=len(self.lines), completed=len(ok), failed=len(failed)
            ),
        }
        if ending == "cancelled":
            final["cancelling_at"] = self.book.cancelled_at.get(self.batch_id, at)
        record = self.record
        await self.book.put(
            record.model_copy(update={"batch": record.batch.model_copy(update=final)})
        )
        log.info("batch %s %s: %d ok, %d failed", self.batch_id, ending, len(ok), len(failed))

    async def _write(self, lines: list[dict[str, Any]], kind: str) -> str | None:
        if not lines:
            return None
        content = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
        file_id = f"file-{self.batch_id.removeprefix('batch_')}-{kind}"
        await self.runners.files.create(
            f"{self.batch_id}_{kind}.jsonl", "batch_output", content, self.record.owner, len(lines),
            file_id=file_id,
        )  # fmt: skip
        return file_id
