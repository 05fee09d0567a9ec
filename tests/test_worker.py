"""The worker against a real broker: priority, FIFO, slots, commits, deadlines."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from inference_allocator.fleet.backends import mock_output
from inference_allocator.producers.client import InferenceClient
from inference_allocator.producers.request_producer import RequestProducer
from inference_allocator.schemas import Priority, ResponseRecord, SlotRecord, now_ms
from inference_allocator.streams.worker import Worker
from inference_allocator.topics import Topics

from .helpers import read_responses, read_topic, wait_for

pytestmark = pytest.mark.broker


def dispatch_order(responses: list[ResponseRecord]) -> list[str]:
    """Request ids in the order they got a GPU slot (one slot: strictly sequential)."""
    return [r.request_id for r in sorted(responses, key=lambda r: r.started_at_ms or 0)]


async def test_a_request_round_trips_with_the_mocks_output(make_settings, start_worker):
    settings = make_settings(mock_latency_ms=30)
    await start_worker(settings)
    async with InferenceClient(settings) as client:
        response = await client.infer("llama-3-70b", "Hello", "high")
    assert response.status == "ok"
    assert response.output == mock_output("llama-3-70b", "Hello")
    assert response.model_id == "llama-3-70b" and response.priority == Priority.HIGH
    assert 0 <= response.gpu_id < settings.gpu_count
    assert response.inference_time_ms >= 29
    assert response.queue_time_ms is not None and response.queue_time_ms >= 0
    assert response.worker_id


async def test_backlog_is_dispatched_high_then_medium_then_low(make_settings, start_worker):
    settings = make_settings(gpu_count=1, mock_latency_ms=5, request_partitions=1)
    sent: dict[str, str] = {}
    async with RequestProducer(settings) as producer:
        # Produced before any worker runs, lows first: the worker sees all of it at once.
        for priority in ("low", "medium", "high"):
            for i in range(3):
                submitted = await producer.submit("m", f"{priority}{i}", priority)
                sent[submitted.request.request_id] = f"{priority}{i}"
    await start_worker(settings)
    responses = await read_responses(settings, 9)
    assert [sent[r] for r in dispatch_order(responses)] == [
        "high0",
        "high1",
        "high2",
        "medium0",
        "medium1",
        "medium2",
        "low0",
        "low1",
        "low2",
    ]


async def test_fifo_within_a_level_across_partitions(make_settings, start_worker):
    settings = make_settings(gpu_count=1, mock_latency_ms=2, request_partitions=3)
    ids = []
    async with RequestProducer(settings) as producer:
        for i in range(12):
            ids.append((await producer.submit("m", f"p{i}", "medium")).request.request_id)
            # Across partitions, order is by record timestamp, which has millisecond grain.
            await asyncio.sleep(0.003)
    await start_worker(settings)
    responses = await read_responses(settings, 12)
    assert dispatch_order(responses) == ids


@pytest.mark.parametrize("buffer", [256, 4], ids=["lows-all-fetched", "lows-paused"])
async def test_later_highs_overtake_every_waiting_low(make_settings, start_worker, buffer):
    """GPU_COUNT=1: 20 lows, then 3 highs; the highs run before every low not yet started.

    With a buffer of 4 the lows' partitions are paused (backpressure) when the highs come:
    the high partitions must still be fetched.
    """
    settings = make_settings(
        gpu_count=1, mock_latency_ms=100, request_partitions=1, worker_buffer_per_priority=buffer
    )
    await start_worker(settings)
    async with RequestProducer(settings) as producer:
        lows = [
            (await producer.submit("m", f"low{i}", "low")).request.request_id for i in range(20)
        ]
        highs = [
            (await producer.submit("m", f"high{i}", "high")).request.request_id for i in range(3)
        ]
        highs_arrived_ms = now_ms()
    responses = {r.request_id: r for r in await read_responses(settings, 23)}
    order = dispatch_order(list(responses.values()))
    first_high = order.index(highs[0])
    assert order[first_high : first_high + 3] == highs, "highs run back to back, in FIFO order"
    started_before = [i for i in lows if responses[i].started_at_ms <= highs_arrived_ms]
    ahead = order[:first_high]
    assert ahead[: len(started_before)] == started_before
    # The highs reach the worker one fetch (a few ms) after the broker acknowledged them;
    # the one slot can free at most once in that window, so at most one more low may start.
    assert len(ahead) - len(started_before) <= 1, "highs overtook the waiting lows"
    assert len(ahead) < 20
    assert [i for i in order if i in lows] == lows, "lows keep FIFO order"


async def test_requests_run_in_parallel_on_distinct_slots(make_settings, start_worker):
    settings = make_settings(gpu_count=4, mock_latency_ms=400)
    await start_worker(settings)
    async with InferenceClient(settings) as client:
        responses = await asyncio.gather(*(client.infer("m", f"p{i}") for i in range(4)))
    assert sorted(r.gpu_id for r in responses) == [0, 1, 2, 3]
    # All four were running at once: each started before any of them completed.
    assert max(r.started_at_ms for r in responses) < min(r.completed_at_ms for r in responses)


async def test_leases_never_exceed_gpu_count_and_are_written_to_the_slot_table(
    make_settings, start_worker
):
    settings = make_settings(gpu_count=2, mock_latency_ms=30)
    worker = await start_worker(settings)
    async with InferenceClient(settings) as client:
        await asyncio.gather(*(client.infer("m", f"p{i}") for i in range(8)))
    topic = Topics.from_settings(settings).gpu_slots
    states: list[SlotRecord] = []

    async def written() -> bool:
        records = await read_topic(settings, topic)
        states[:] = [SlotRecord.model_validate_json(r.value) for r in records]
        last = {s.slot_id: s.state for s in states}
        return sum(s.state == "leased" for s in states) >= 8 and set(last.values()) == {"free"}

    await wait_for(written, "every lease, and both slots free again, in the slot table")
    assert {s.slot_id for s in states} == {f"{worker.worker_id}/mock/{g}" for g in (0, 1)}
    # Every lease is written (a release that the slot's next lease follows within one
    # batch may not be): one per request, never two slots holding one request.
    leases = [s for s in states if s.state == "leased"]
    assert sorted(s.request_id for s in leases) == sorted({s.request_id for s in leases})
    assert len(leases) == 8 and all(s.expires_at_ms > s.leased_at_ms for s in leases)
    for slot_id in {s.slot_id for s in states}:  # each slot's leases one after the other
        times = [s.leased_at_ms for s in leases if s.slot_id == slot_id]
        assert times == sorted(times)


async def test_offsets_are_committed_once_responses_are_acknowledged(make_settings, start_worker):
    settings = make_settings(gpu_count=2, mock_latency_ms=5, request_partitions=1)
    await start_worker(settings)
    async with InferenceClient(settings) as client:
        await asyncio.gather(*(client.infer("m", f"p{i}", "low") for i in range(6)))
    committed = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await committed.start()
    tp = TopicPartition(Topics.from_settings(settings).request(Priority.LOW), 0)
    try:
        positions: list[int | None] = []

        async def probe() -> bool:
            positions.append(await committed.committed(tp))
            return positions[-1] == 6

        deadline = asyncio.get_running_loop().time() + 20
        while not await probe():
            assert asyncio.get_running_loop().time() < deadline, positions[-1]
            await asyncio.sleep(0.05)
    finally:
        await committed.stop()


async def test_a_worker_stopped_as_its_runs_end_commits_their_answers(make_settings):
    """Answers go out after their runs' tasks have ended (``Answers.respond``): a worker
    stopped the moment its last run ends still waits for them, and commits them."""
    settings = make_settings(gpu_count=8, mock_latency_ms=50, request_partitions=1)
    async with RequestProducer(settings) as producer:
        await producer.send_many(
            [producer.build("m", f"p{i}", Priority.LOW, timeout_seconds=600) for i in range(8)]
        )
    worker = Worker(settings)
    await worker.start()
    try:
        await wait_for(
            lambda: worker.slots.usage.releases == 8, "the eight runs to end", interval=0
        )
    finally:
        await worker.stop()  # at once: the answers may not be with the broker yet
    committed = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await committed.start()
    try:
        tp = TopicPartition(Topics.from_settings(settings).request(Priority.LOW), 0)
        assert await committed.committed(tp) == 8
    finally:
        await committed.stop()
    assert len(await read_responses(settings, 8)) == 8


async def test_a_request_past_its_deadline_is_expired_not_executed(make_settings, start_worker):
    settings = make_settings(gpu_count=1, mock_latency_ms=5)
    async with RequestProducer(settings) as producer:
        late = await producer.submit("m", "too late", "high", timeout_seconds=0.05)
        on_time = await producer.submit("m", "fine", "high")
    await asyncio.sleep(0.2)  # the first deadline passes before any worker runs
    await start_worker(settings)
    responses = {r.request_id: r for r in await read_responses(settings, 2)}
    expired = responses[late.request.request_id]
    assert expired.status == "expired" and expired.gpu_id is None and expired.output is None
    assert responses[on_time.request.request_id].status == "ok"
    leased: list[SlotRecord] = []

    async def lease_written() -> bool:
        # Slot-table writes linger to go out in batches: the lease may follow the answer.
        records = await read_topic(settings, Topics.from_settings(settings).gpu_slots)
        leased[:] = [SlotRecord.model_validate_json(r.value) for r in records if r.value]
        return on_time.request.request_id in {s.request_id for s in leased}

    await wait_for(lease_written, "the on-time request's lease in the slot table")
    assert late.request.request_id not in {s.request_id for s in leased}


async def test_a_failing_backend_answers_with_an_error(make_settings, start_worker):
    class Broken:
        async def infer(self, model_id: str, prompt: str, gpu_id: int) -> str:
            raise RuntimeError("CUDA out of memory")

    settings = make_settings()
    await start_worker(settings, backend=Broken())
    async with InferenceClient(settings) as client:
        response = await client.infer("m", "p")
    assert response.status == "error" and "CUDA out of memory" in response.error


async def test_workers_in_one_group_share_the_partitions(make_settings, start_worker):
    settings = make_settings(
        gpu_count=2, mock_latency_ms=20, request_partitions=4, worker_mode="shared"
    )
    first = await start_worker(settings)
    second = await start_worker(settings)
    await wait_for(
        lambda: (
            first.assignment()
            and second.assignment()
            and not first.assignment() & second.assignment()
        ),
        "the group to split the partitions",
    )
    async with InferenceClient(settings) as client:
        responses = await asyncio.gather(
            *(client.infer("m", f"p{i}", ("high", "medium", "low")[i % 3]) for i in range(40))
        )
    assert all(r.status == "ok" for r in responses)
    assert {r.worker_id for r in responses} == {first.worker_id, second.worker_id}


async def test_weighted_policy_lets_lows_through_a_backlog_of_highs(make_settings, start_worker):
    settings = make_settings(
        gpu_count=1, mock_latency_ms=5, request_partitions=1, scheduling_policy="weighted"
    )
    sent: dict[str, str] = {}
    async with RequestProducer(settings) as producer:
        for priority in ("high", "low"):
            for request in await producer.send_many(
                [producer.build("m", f"{priority}{i}", priority) for i in range(12)]
            ):
                sent[request.request.request_id] = priority
    await start_worker(settings)
    order = [sent[i] for i in dispatch_order(await read_responses(settings, 24))]
    # 6:1 between high and low while both wait (strict would run all 12 highs first).
    assert order[:7].count("low") == 1
    assert order.index("low") < 7


@pytest.mark.embedded
async def test_exactly_once_is_refused_on_a_broker_without_transactions(make_settings):
    from inference_allocator.errors import ConfigurationError
    from inference_allocator.streams.worker import Worker

    worker = Worker(make_settings(exactly_once=True))
    with pytest.raises(ConfigurationError, match="INFERENCE_EXACTLY_ONCE needs Kafka transactions"):
        await worker.start()


async def test_an_ageing_bound_gives_lows_their_turn_under_a_high_flood(
    make_settings, start_worker
):
    """Strict priority with INFERENCE_MAX_WAIT_SECONDS_LOW=1: 600 highs (6 s of work on 2
    slots of 20 ms) and 20 lows produced together. Without the bound every low would wait
    for the last high; with it each low runs about 1 s after it arrived, while highs still
    wait."""
    settings = make_settings(gpu_count=2, mock_latency_ms=20, max_wait_seconds_low=1.0)
    await start_worker(settings)
    async with RequestProducer(settings) as producer:
        lows = [producer.build("m", f"low{i}", "low") for i in range(20)]
        highs = [producer.build("m", f"high{i}", "high") for i in range(600)]
        await producer.send_many(lows + highs)
    responses = await read_responses(settings, 620, timeout=90)
    by_level = {
        level: sorted(r.completed_at_ms or 0 for r in responses if r.priority == level)
        for level in (Priority.HIGH, Priority.LOW)
    }
    last_high = by_level[Priority.HIGH][-1]
    assert by_level[Priority.LOW][-1] < last_high, "a low waited for the whole flood"
    waits = sorted(r.queue_time_ms or 0 for r in responses if r.priority == Priority.LOW)
    during_flood = sum(t < last_high for t in by_level[Priority.LOW])
    print(
        f"\nageing bound 1 s under a flood of 600 highs: {during_flood}/20 lows answered "
        f"while highs waited; low queue time p50 {waits[10]:.0f} ms, max {waits[-1]:.0f} ms"
    )


async def test_a_rebalance_while_a_request_runs_does_not_commit_past_it(
    make_settings, start_worker
):
    """A worker joining the group revokes and reassigns the request partitions while the
    leader runs a request; the leader fetches that record again. Its offset must not be
    committed before its run answers, or a crash of the leader would lose it."""
    settings = make_settings(gpu_count=1, mock_latency_ms=12_000)
    await start_worker(settings)
    async with RequestProducer(settings) as producer:
        submitted = await producer.submit("m", "a long one", Priority.HIGH)
    answered = asyncio.create_task(read_responses(settings, 1, timeout=30))
    topics = Topics.from_settings(settings)

    async def committed() -> int:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, group_id=settings.consumer_group
        )
        await consumer.start()
        try:
            return await consumer.committed(submitted.tp) or 0
        finally:
            await consumer.stop()

    async def running() -> bool:
        slots = await read_topic(settings, topics.gpu_slots)
        return any(b'"leased"' in (r.value or b"") for r in slots)

    await wait_for(running, "the request to run")
    async with Worker(settings):  # a standby joins: a rebalance while the request runs
        await asyncio.sleep(1.5)  # the leader has fetched the record again by now
        assert not answered.done(), "the test's request must still run here"
        assert await committed() <= submitted.offset, "committed past a running request"
        [answer] = await answered
        assert answer.request_id == submitted.request.request_id
        await wait_for(lambda: _committed_past(committed, submitted.offset), "the commit")


async def _committed_past(committed, offset: int) -> bool:
    return await committed() > offset
