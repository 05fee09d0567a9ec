"""What only a durable broker can show: a broker restart under load, a compacted slot table.

Run by ``make test-kafka``; skipped (with that reason) on the embedded broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from inference_allocator.brokers import ApacheKafkaBroker, free_port
from inference_allocator.config import Settings
from inference_allocator.consumers.reader import ClusterReader
from inference_allocator.producers.request_producer import RequestProducer

from .conftest import apache_kafka_or_skip
from .helpers import end_offsets, read_topic, wait_for

pytestmark = [pytest.mark.apache_kafka, pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def own_kafka(broker, tmp_path) -> Iterator[ApacheKafkaBroker]:
    """An Apache Kafka of this test's own, since the test stops and restarts it. Requested
    before the worker and bridge fixtures, so it is stopped after them."""
    with apache_kafka_or_skip(tmp_path / "kafka", free_port()) as kafka:
        yield kafka


async def test_a_broker_restart_under_load_loses_no_request(own_kafka, start_worker, start_bridge):
    settings = Settings(
        kafka_bootstrap_servers=own_kafka.bootstrap_servers,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        gpu_count=4,
        mock_latency_ms=50,
        queue_max_size=10_000,
        request_timeout_seconds=60,
    )
    worker = await start_worker(settings)
    bridge = await start_bridge(settings)
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    async with httpx.AsyncClient(base_url=bridge.base_url, timeout=120, limits=limits) as http:

        async def infer(i: int) -> httpx.Response:
            body = {"model_id": "m", "prompt": f"restart {i}", "priority": "medium"}
            return await http.post("/api/v1/inference", json=body)

        calls = [asyncio.create_task(infer(i)) for i in range(200)]
        # 200 requests on 4 slots of 50 ms: about 2.5 s of work. Stop the broker early in it.
        await wait_for(lambda: sum(c.done() for c in calls) >= 20, "the first answers")
        answered_before = sum(c.done() for c in calls)
        await asyncio.to_thread(own_kafka.stop)  # SIGTERM: a clean broker shutdown
        await asyncio.sleep(2)
        await asyncio.to_thread(own_kafka.start)  # the same port and data directory
        responses = await asyncio.wait_for(asyncio.gather(*calls), 150)

        codes = Counter(r.status_code for r in responses)
        assert set(codes) <= {200, 504}, codes  # an answer or an honest timeout, no error
        assert answered_before < 200, "the outage came after the load"
        ids = [r.json()["request_id"] for r in responses if r.status_code == 200]
        assert len(ids) == len(set(ids))
        # The worker and the bridge reconnected by themselves: a new request goes through.
        after = await infer(-1)
        assert after.status_code == 200, after.text
        assert after.json()["worker_id"] == worker.worker_id

    # None lost: every answered id is on the responses topic, each with one answer.
    records = await read_topic(settings, f"{settings.topic_prefix}.responses")
    on_topic = Counter(r.key.decode() for r in records)
    assert set(ids) <= set(on_topic)
    duplicates = sum(n > 1 for n in on_topic.values())
    print(
        f"\nbroker restart under load: {dict(codes)}; {answered_before} answered before it; "
        f"{duplicates} ids answered twice on the topic"
    )


async def test_the_slot_table_is_compacted_so_a_bridges_replay_stays_short(
    make_settings, start_worker
):
    """Every request writes a lease and a release to the slot table; a bridge replays the
    table from its start, so without compaction its start-up would grow with traffic."""
    settings = make_settings(gpu_count=8, mock_latency_ms=0, queue_max_size=10**6)
    await start_worker(settings)
    total = 20_000
    async with RequestProducer(settings) as producer:
        for start in range(0, total, 1000):
            batch = [producer.build("m", f"p{i}", "low") for i in range(start, start + 1000)]
            await producer.send_many(batch)
    async with ClusterReader(settings) as reader:
        await wait_for(
            lambda: reader.status().queue_size == 0 and reader.status().gpus_busy == 0,
            "every request to be answered",
            timeout=120,
        )
    written = await end_offsets(settings, f"{settings.topic_prefix}.gpu-slots")

    async def replayed() -> int:
        async with ClusterReader(settings) as fresh:
            return fresh.slot_records_replayed

    started = time.monotonic()
    await wait_for(lambda: _below(replayed(), written // 4), "the log cleaner", timeout=120)
    replay = await replayed()
    print(
        f"\nslot table after {total} requests: {written} records written, "
        f"a fresh bridge replays {replay} after compaction "
        f"({time.monotonic() - started:.0f} s after the last request)"
    )
    # A live worker's 8 slots are all there after compaction.
    async with ClusterReader(settings) as fresh:
        assert fresh.status().gpus_available == 8


async def _below(value: asyncio.Future[int] | object, limit: int) -> bool:
    return await value < limit  # type: ignore[misc, operator]
